"""Prompt sets: create (JSON body or JSONL upload), list, show, page through prompts, export JSONL."""
from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlmodel import select

from services.gateway.deps import KeyDep, SessionDep, owned
from services.gateway.validation import parse_jsonl, validate_items
from shared import crud
from shared.models import Page, Prompt, PromptPublic, PromptSet, PromptSetPublic

router = APIRouter(prefix="/v1/prompt-sets", tags=["prompt sets"])
SPLITS = ("train", "heldout")


def _store(session, key, *, name: str, description: str, split: str, items: list[dict]) -> PromptSet:
    if split not in SPLITS:
        raise HTTPException(422, [{"loc": ["split"], "msg": f"split must be one of {SPLITS}"}])
    if not name.strip():
        raise HTTPException(422, [{"loc": ["name"], "msg": "name must not be empty"}])
    ps = crud.create_prompt_set(session, workspace_id=key.workspace_id, name=name,
                                description=description, split=split, items=items)
    session.commit()
    return ps


@router.post("", status_code=201, response_model=PromptSetPublic)
async def create_prompt_set(request: Request, session: SessionDep, key: KeyDep) -> PromptSet:
    """JSON body {name, description?, split?, items: [...]}, or multipart with a JSONL `file`
    (one item per line) and form fields name / description / split."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "read"):
            raise HTTPException(422, [{"loc": ["file"], "msg": "attach the JSONL file as form field 'file'"}])
        raw = await upload.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPException(422, [{"loc": ["file"], "msg": "the file must be UTF-8 JSONL"}])
        items, errors = parse_jsonl(text)
        if errors:
            raise HTTPException(422, errors)
        name = str(form.get("name") or getattr(upload, "filename", "") or "upload")
        return _store(session, key, name=name, description=str(form.get("description") or ""),
                      split=str(form.get("split") or "train"), items=items)
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(422, [{"loc": ["body"], "msg": "send JSON {name, items} or a multipart JSONL upload"}])
    if not isinstance(body, dict):
        raise HTTPException(422, [{"loc": ["body"], "msg": "the body must be a JSON object"}])
    unknown = sorted(set(body) - {"name", "description", "split", "items"})
    if unknown:
        raise HTTPException(422, [{"loc": ["body", k], "msg": "unknown field"} for k in unknown])
    if not isinstance(body.get("name"), str):
        raise HTTPException(422, [{"loc": ["body", "name"], "msg": "field required (a string)"}])
    items, errors = validate_items(body.get("items"))
    if errors:
        raise HTTPException(422, errors)
    return _store(session, key, name=body["name"], description=str(body.get("description", "")),
                  split=str(body.get("split", "train")), items=items)


@router.get("", response_model=list[PromptSetPublic])
def list_prompt_sets(session: SessionDep, key: KeyDep) -> list[PromptSet]:
    return crud.workspace_rows(session, PromptSet, workspace_id=key.workspace_id)


@router.get("/{set_id}", response_model=PromptSetPublic)
def get_prompt_set(set_id: int, session: SessionDep, key: KeyDep) -> PromptSet:
    return owned(session, PromptSet, set_id, key, "prompt set")


@router.get("/{set_id}/prompts", response_model=Page)
def list_prompts(set_id: int, session: SessionDep, key: KeyDep,
                 offset: Annotated[int, Query(ge=0)] = 0,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Page:
    ps = owned(session, PromptSet, set_id, key, "prompt set")
    rows = session.exec(select(Prompt).where(Prompt.prompt_set_id == ps.id).order_by(Prompt.position)
                        .offset(offset).limit(limit)).all()
    items = [PromptPublic.model_validate(r, from_attributes=True).model_dump() for r in rows]
    return Page(items=items, total=ps.size, offset=offset, limit=limit)


@router.get("/{set_id}/export")
def export_prompt_set(set_id: int, session: SessionDep, key: KeyDep) -> StreamingResponse:
    """The set as JSONL in the upload format (one item per line), ready to upload again."""
    ps = owned(session, PromptSet, set_id, key, "prompt set")
    rows = session.exec(select(Prompt).where(Prompt.prompt_set_id == ps.id).order_by(Prompt.position)).all()

    def lines():
        for p in rows:
            item = {"prompt": p.messages if len(p.messages) > 1 else p.messages[0]["content"]}
            item.update({k: getattr(p, k) for k in ("reference", "constraints", "answer", "topic")
                         if getattr(p, k) is not None})
            yield json.dumps(item) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")
