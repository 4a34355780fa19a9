"""Checks every request passes before a route sees it: body size, strict JSON, readable text.

- Body size: a declared Content-Length over the limit is refused before anything is read; a
  streamed body is counted as it arrives and refused as soon as it passes the limit (413).
- JSON: NaN and Infinity are not JSON (RFC 8259) and are refused, as are numbers no field could
  hold (floats that overflow, integers of more than 30 digits) and a body that is not UTF-8;
  the error names the field they were in.
- Text: every string in a JSON body (keys included) must be storable and readable back: no NUL
  (Postgres text refuses it) and no unpaired surrogate (not encodable as UTF-8). The error names
  the field.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway import errors


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, [errors.error([], f"request body larger than {limit} bytes; split the "
                                                f"prompt set or raise AUTODIDACT_MAX_BODY_BYTES", "too_large")])


class BodyLimit:
    """ASGI middleware: at most `limit` bytes of request body."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            exc = BodyTooLarge(self.limit)
            status = 413 if declared.isdigit() else 400
            detail = exc.detail if status == 413 else [errors.error([], "invalid Content-Length header", "bad_request")]
            response_body = json.dumps(errors.body(detail)).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(response_body)).encode())]})
            await send({"type": "http.response.body", "body": response_body})
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


# ---------------------------------------------------------------- text and numbers
class NotANumber:
    """What the parser puts where the body has NaN, Infinity or a number no column could hold,
    so the error can name the field it sits in."""

    def __init__(self, text: str):
        self.text = text[:40]

    def problem(self) -> str:
        if self.text in ("NaN", "Infinity", "-Infinity"):
            return f"{self.text} is not a JSON number (RFC 8259); send a finite number"
        return f"the number {self.text}{'...' if len(self.text) == 40 else ''} is too large"


def _float(text: str) -> float | NotANumber:
    value = float(text)
    return value if math.isfinite(value) else NotANumber(text)


def _int(text: str) -> int | NotANumber:
    return int(text) if len(text.lstrip("-")) <= 30 else NotANumber(text)


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored and read back, or None."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which cannot be stored; remove it"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains an unpaired surrogate (e.g. \\ud800), which is not valid Unicode text"
    return None


def value_errors(value: Any, loc: list) -> list[dict]:
    """Errors for every unreadable string and every non-number inside a parsed JSON value."""
    out: list[dict] = []
    stack = [(value, loc)]
    while stack:
        v, where = stack.pop()
        if isinstance(v, str):
            if (why := text_problem(v)) is not None:
                out.append(errors.error(where, why))
        elif isinstance(v, NotANumber):
            out.append(errors.error(where, v.problem()))
        elif isinstance(v, list):
            stack.extend((x, where + [i]) for i, x in enumerate(v))
        elif isinstance(v, dict):
            for k, x in v.items():
                if (why := text_problem(k)) is not None:
                    out.append(errors.error(where, f"a key {why}"))
                else:
                    stack.append((x, where + [k]))
    return sorted(out, key=lambda e: [str(p) for p in e["loc"]])


def loads_strict(raw: bytes | str, loc: list | None = None) -> Any:
    """Parse JSON refusing NaN/Infinity, numbers too large to hold, invalid UTF-8 and unreadable
    strings. Raises HTTPException(422) with errors located under `loc`, naming the field."""
    loc = loc or []
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as exc:
        raise HTTPException(422, [errors.error(loc, f"not UTF-8 text (bad byte at position {exc.start})")])
    try:
        value = json.loads(text, parse_constant=NotANumber, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, [errors.error(loc, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")])
    except (ValueError, RecursionError) as exc:
        raise HTTPException(422, [errors.error(loc, f"invalid JSON: {str(exc)[:200]}")])
    problems = value_errors(value, loc)
    if problems:
        raise HTTPException(422, problems)
    return value


class StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


def _query_names(dependant) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


class StrictRoute(APIRoute):
    """Routes that refuse query parameters they do not declare and whose JSON bodies go through
    `loads_strict` (FastAPI passes HTTPExceptions raised while reading the body straight to the
    error handlers)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()
        known = _query_names(self.dependant)

        async def strict_handler(request: Request):
            unknown = sorted({k for k in request.query_params if k not in known})
            if unknown:
                allowed = f"allowed: {sorted(known)}" if known else "this endpoint takes none"
                raise HTTPException(422, [errors.error(["query", k], f"unknown query parameter; {allowed}")
                                          for k in unknown[:20]])
            return await handler(StrictRequest(request.scope, request.receive))

        return strict_handler
