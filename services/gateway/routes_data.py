"""Prompt sets: create (JSON body, streamed JSONL or Parquet upload), list, show, page through prompts,
export (JSONL, Parquet, dataset directory)."""
from __future__ import annotations

import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlmodel import select

from services.gateway import errors, formats, idempotency
from services.gateway.downloads import FILES_DOC, JSONL_DOC, FormatQ, JSONLResponse, StyleQ  # noqa: F401
from services.gateway.downloads import file_answer, jsonl, records_or_422
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
MAX_PARQUET_BYTES = 256 * 1024 * 1024  # uncompressed column data of one uploaded Parquet file


CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/PromptSetRequest"}},
    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/PromptSetUpload"}}}}}
EXTRA_SCHEMAS = (PromptSetRequest, PromptSetUpload)  # referenced above; added to the schema by main


def pydantic_errors(exc: ValidationError) -> list[dict]:
    return [errors.error([p for p in e["loc"]], e["msg"], e["type"]) for e in exc.errors()]


def _is_parquet(f) -> bool:
    head = f.read(4)
    f.seek(0)
    return head == b"PAR1"


def _parquet_items(f, digest, mapping: dict) -> tuple[list[dict], list[dict]]:
    """Validated items of an uploaded Parquet file (columns mapped to prompt fields)."""
    for chunk in iter(lambda: f.read(1 << 20), b""):
        digest.update(chunk)
    f.seek(0)
    try:
        tab = formats.parquet_table(f, max_bytes=MAX_PARQUET_BYTES)
    except ValueError as exc:
        return [], [errors.error(["file"], str(exc))]
    return formats.items_from_table(tab, mapping)


async def _from_upload(request: Request) -> tuple[dict, list[dict], str]:
    """(fields, items, digest) of a multipart upload: a JSONL file read line by line from the
    spooled file, or a Parquet file whose columns `map` fields name (field=column)."""
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("file")
    if upload is None or not hasattr(upload, "read"):
        raise HTTPException(422, [errors.error(["file"], "attach the JSONL or Parquet file as form field 'file'")])
    maps = [v for k, v in form.multi_items() if k == "map"]
    fields = {k: v for k, v in form.items() if k not in ("file", "map")}
    bad = [errors.error([k], "unknown form field; allowed: file, name, description, split, map") for k in fields
           if k not in ("name", "description", "split")]
    named = list(fields.items()) + [("map", v) for v in maps]
    bad += [errors.error([k], why) for k, v in named if isinstance(v, str) and (why := text_problem(v))]
    bad += [errors.error([k], "must be a text field") for k, v in named if not isinstance(v, str)]
    if bad:
        raise HTTPException(422, bad)
    digest = hashlib.sha256(json.dumps(sorted(fields.items())).encode())
    if await run_in_threadpool(_is_parquet, upload.file):
        mapping, map_errors = formats.parse_mapping(maps)
        if map_errors:
            raise HTTPException(422, map_errors)
        digest.update(json.dumps(sorted(mapping.items())).encode())
        items, item_errors = await run_in_threadpool(_parquet_items, upload.file, digest, mapping)
    elif maps:
        raise HTTPException(422, [errors.error(["map"], "map applies to Parquet uploads (the file does not start "
                                                        "with Parquet's PAR1); a JSONL line names its fields itself")])
    else:
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


@router.get("/{set_id}/export", response_class=JSONLResponse, responses={**FILES_DOC, **errors.responses(404, 409)})
def export_prompt_set(set_id: int, session: SessionDep, key: KeyDep, format: FormatQ = "jsonl",
                      style: StyleQ = "conversational"):
    """The set as JSONL in the upload format (one item per line, ready to upload again), or as
    Parquet / a `datasets` directory (.tar.gz) with columns prompt, reference, constraints (JSON
    text), answer, topic — importable again with POST /v1/prompt-sets."""
    ps = owned(session, PromptSet, set_id, key, "prompt set")
    rows = [p.model_dump(include={"messages", "reference", "constraints", "answer", "topic"})
            for p in crud.prompts_of_set(session, prompt_set_id=ps.id)]
    if format == "jsonl":
        return jsonl(formats.upload_records(rows))
    records = records_or_422(formats.prompt_records, rows, style)
    return file_answer(records, fmt=format, kind="prompts", style=style, name=f"prompt-set-{ps.id}")
