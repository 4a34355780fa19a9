"""Prompt sets: create (JSON body or streamed JSONL upload), list, show, page through prompts, export JSONL."""
from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlmodel import select

from services.gateway import errors, idempotency
from services.gateway.deps import KeyDep, SessionDep, owned
from services.gateway.limits import StrictRoute, text_problem
from services.gateway.paging import CursorQ, LimitQ, page
from services.gateway.schemas import PromptSetFields, PromptSetPage, PromptSetRequest, PromptSetUpload
from services.gateway.validation import parse_jsonl_lines, validate_items
from shared import crud
from shared.models import Page, Prompt, PromptPublic, PromptSet, PromptSetPublic

router = APIRouter(prefix="/v1/prompt-sets", tags=["prompt sets"], route_class=StrictRoute,
                   responses=errors.responses(401, 422))
MAX_OFFSET = 2**31 - 1


class JSONLResponse(StreamingResponse):
    media_type = "application/x-ndjson"


JSONL_DOC = {200: {"description": "JSON Lines, one item per line",
                   "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}
CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/PromptSetRequest"}},
    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PromptSetUpload"}}}}}
EXTRA_SCHEMAS = (PromptSetRequest, PromptSetUpload)  # referenced above; added to the schema by main


def pydantic_errors(exc: ValidationError) -> list[dict]:
    return [errors.error([p for p in e["loc"]], e["msg"], e["type"]) for e in exc.errors()]


async def _from_upload(request: Request) -> tuple[dict, list[dict], str]:
    """(fields, items, digest) of a multipart JSONL upload, read line by line from the spooled file."""
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("file")
    if upload is None or not hasattr(upload, "read"):
        raise HTTPException(422, [errors.error(["file"], "attach the JSONL file as form field 'file'")])
    fields = {k: v for k, v in form.items() if k != "file"}
    bad = [errors.error([k], f"unknown form field; allowed: file, name, description, split") for k in fields
           if k not in ("name", "description", "split")]
    bad += [errors.error([k], why) for k, v in fields.items() if isinstance(v, str) and (why := text_problem(v))]
    bad += [errors.error([k], "must be a text field") for k, v in fields.items() if not isinstance(v, str)]
    if bad:
        raise HTTPException(422, bad)
    digest = hashlib.sha256(json.dumps(sorted(fields.items())).encode())
    items, item_errors = await run_in_threadpool(parse_jsonl_lines, upload.file, digest)
    if not fields.get("name"):
        fallback = (upload.filename or "upload")[:200]
        fields["name"] = fallback if not text_problem(fallback) and fallback.strip() else "upload"
    try:
        PromptSetFields.model_validate({**fields, "items": items or [None]})
    except ValidationError as exc:
        item_errors = pydantic_errors(exc) + item_errors
    if item_errors:
        raise HTTPException(422, item_errors)
    return fields, items, digest.hexdigest()


async def _from_json(request: Request) -> tuple[dict, list[dict], str]:
    body = await request.json()  # StrictRequest: NaN, NUL and lone surrogates already refused
    problems: list[dict] = []
    try:
        PromptSetFields.model_validate(body)
    except ValidationError as exc:
        problems += [e for e in pydantic_errors(exc) if e["loc"][:1] != ["items"]]
    items, item_errors = validate_items(body.get("items") if isinstance(body, dict) else None)
    if problems or item_errors:
        raise HTTPException(422, problems + item_errors)
    fields = {k: body[k] for k in ("name", "description", "split") if k in body}
    return fields, items, idempotency.request_hash(body)


@router.post("", status_code=201, response_model=PromptSetPublic, openapi_extra=CREATE_BODY,
             responses=errors.responses(400, 409, 413, 415))
async def create_prompt_set(request: Request, session: SessionDep, key: KeyDep,
                            idempotency_key: idempotency.IdempotencyKey = None) -> PromptSetPublic:
    """JSON body (PromptSetRequest), or multipart with a JSONL `file` (one PromptItem per line)
    and form fields name / description / split. A set with any problem is refused whole."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        fields, items, digest = await _from_upload(request)
    elif ctype.split(";")[0].strip() == "application/json":
        fields, items, digest = await _from_json(request)
    else:
        raise HTTPException(415, "send application/json ({name, items}) or a multipart/form-data JSONL upload")

    def store() -> PromptSetPublic:
        ps = crud.create_prompt_set(session, workspace_id=key.workspace_id, name=fields["name"],
                                    description=fields.get("description") or "",
                                    split=fields.get("split") or "train", items=items)
        session.commit()
        return PromptSetPublic.model_validate(ps, from_attributes=True)

    return await run_in_threadpool(idempotency.once, session, key, scope="prompt-sets", idem=idempotency_key,
                                   digest=digest, create=store, status_code=201)


@router.get("", response_model=PromptSetPage)
def list_prompt_sets(session: SessionDep, key: KeyDep, limit: LimitQ = 50, cursor: CursorQ = None) -> PromptSetPage:
    rows, nxt = page(session, PromptSet, workspace_id=key.workspace_id, limit=limit, cursor=cursor)
    return PromptSetPage(items=[PromptSetPublic.model_validate(r, from_attributes=True) for r in rows],
                         next_cursor=nxt)


@router.get("/{set_id}", response_model=PromptSetPublic, responses=errors.responses(404))
def get_prompt_set(set_id: int, session: SessionDep, key: KeyDep) -> PromptSet:
    return owned(session, PromptSet, set_id, key, "prompt set")


@router.get("/{set_id}/prompts", response_model=Page, responses=errors.responses(404))
def list_prompts(set_id: int, session: SessionDep, key: KeyDep,
                 offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Page:
    ps = owned(session, PromptSet, set_id, key, "prompt set")
    rows = session.exec(select(Prompt).where(Prompt.prompt_set_id == ps.id).order_by(Prompt.position)
                        .offset(offset).limit(limit)).all()
    items = [PromptPublic.model_validate(r, from_attributes=True).model_dump() for r in rows]
    return Page(items=items, total=ps.size, offset=offset, limit=limit)


@router.get("/{set_id}/export", response_class=JSONLResponse, responses={**JSONL_DOC, **errors.responses(404)})
def export_prompt_set(set_id: int, session: SessionDep, key: KeyDep) -> JSONLResponse:
    """The set as JSONL in the upload format (one item per line), ready to upload again."""
    ps = owned(session, PromptSet, set_id, key, "prompt set")
    rows = session.exec(select(Prompt).where(Prompt.prompt_set_id == ps.id).order_by(Prompt.position)).all()

    def lines():
        for p in rows:
            item = {"prompt": p.messages if len(p.messages) > 1 else p.messages[0]["content"]}
            item.update({k: getattr(p, k) for k in ("reference", "constraints", "answer", "topic")
                         if getattr(p, k) is not None})
            yield json.dumps(item) + "\n"

    return JSONLResponse(lines())
