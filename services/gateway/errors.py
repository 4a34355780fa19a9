"""One error body for every 4xx: {"detail": [{"loc": [...], "msg": "...", "type": "..."}]}.

`loc` names the field: body fields by their path (["prompt_set_ids", 0], ["items", 3, "prompt"]),
query and path parameters as ["query", name] / ["path", name], a JSONL upload's line as
["file", "line 4", field]; errors about the request as a whole have an empty `loc`. FastAPI's
own validation errors are reshaped to match (the raw input is never echoed back: it may not even
be representable as JSON, e.g. NaN).
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

KINDS = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "invalid", 503: "unavailable"}


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: list[ErrorItem]


def error(loc: list, msg: str, kind: str = "invalid") -> dict:
    return {"loc": list(loc), "msg": msg, "type": kind}


def items(detail: Any, status: int) -> list[dict]:
    """Any HTTPException detail (a string, a dict or a list of them) as a list of error items."""
    kind = KINDS.get(status, "error")
    if detail is None or isinstance(detail, str):
        return [error([], detail or "request refused", kind)]
    if isinstance(detail, dict):
        detail = [detail]
    return [error(list(d.get("loc", [])), str(d.get("msg", "")), d.get("type", kind)) for d in detail]


def body(errors: list[dict]) -> dict:
    return {"detail": errors}


def _validation_loc(loc: tuple) -> list:
    # Body fields are named by their path alone; FastAPI's leading "body" adds nothing.
    parts = [p if isinstance(p, int) else str(p) for p in loc]
    return parts[1:] if parts[:1] == ["body"] and len(parts) > 1 else parts


def on_validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [error(_validation_loc(e.get("loc", ())), e.get("msg", "invalid value"), e.get("type", "invalid"))
              for e in exc.errors()]
    return JSONResponse(body(errors), status_code=422)


def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(allowed_methods(request))
    return JSONResponse(body(items(exc.detail, exc.status_code)), status_code=exc.status_code, headers=headers or None)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (Starlette's 405 names only the first route's)."""
    from starlette.routing import Match

    return [m for m in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
            if any(route.matches({**request.scope, "method": m})[0] == Match.FULL for route in request.app.routes)]


def on_db_value_error(_request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold that the edge checks let through. The edge is meant to
    catch all of them first; this keeps a miss a 422 and logs it so it can be closed."""
    log.warning("a request value reached the database and was refused: %s", exc)
    return JSONResponse(body([error([], "a value in the request cannot be stored (out of range or "
                                        "not representable)")]), status_code=422)


def responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for error codes, all with the one error body."""
    text = {400: "Malformed request body (e.g. broken multipart)", 401: "Missing, unknown, revoked or expired API key",
            403: "The key's role does not allow this", 404: "No such resource in the caller's workspace",
            409: "The resource is in a state that does not allow this", 413: "Request body too large",
            422: "Invalid input; each error names its field"}
    # The content is spelled out (not `model=`) so routes whose success is JSONL or PNG still
    # declare their errors as JSON; main adds ErrorBody to the schema's components.
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {c: {"description": text.get(c, "Error"), "content": ref} for c in codes}
