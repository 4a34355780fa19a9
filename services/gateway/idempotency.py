"""`Idempotency-Key` on creating requests: a retry with the same key gets the first answer back
and creates nothing new.

The key is claimed (a committed row) before the work starts, so two concurrent requests with
one key cannot both create: the second sees the claim and answers 409 until the first is done.
A request that fails releases its claim, so the client may retry it. A claim left by a gateway
that died mid-request is taken over after STALE_SECONDS. The same key with a different body is
refused (422): it is almost certainly a client bug.
"""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Annotated, Any, Callable, Optional

from fastapi import Header, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from services.gateway import errors
from shared.models import ApiKey, IdempotencyRecord, utcnow

STALE_SECONDS = 120

IdempotencyKey = Annotated[Optional[str], Header(
    alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
    description="any unique string (e.g. a UUID): a retry with the same key returns the first result")]

LOC = ["header", "Idempotency-Key"]


def request_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _find(session: Session, key: ApiKey, scope: str, idem: str) -> IdempotencyRecord | None:
    return session.exec(select(IdempotencyRecord).where(
        IdempotencyRecord.workspace_id == key.workspace_id, IdempotencyRecord.scope == scope,
        IdempotencyRecord.key == idem).execution_options(populate_existing=True)).first()


def _claim(session: Session, key: ApiKey, scope: str, idem: str, digest: str) -> IdempotencyRecord | JSONResponse:
    """Our claim (a new row), or the first request's answer."""
    rec = _find(session, key, scope, idem)
    if rec is None:
        rec = IdempotencyRecord(workspace_id=key.workspace_id, scope=scope, key=idem, request_hash=digest)
        session.add(rec)
        try:
            session.commit()
            return rec
        except IntegrityError:  # claimed by a concurrent request just now
            session.rollback()
            rec = _find(session, key, scope, idem)
    if rec.request_hash != digest:
        raise HTTPException(422, [errors.error(LOC, "this Idempotency-Key was used with a different request "
                                                    "body; use a new key for a new request")])
    if rec.status_code is not None:
        return JSONResponse(rec.response, status_code=rec.status_code, headers={"Idempotency-Replayed": "true"})
    created = rec.created_at if rec.created_at.tzinfo else rec.created_at.replace(tzinfo=utcnow().tzinfo)
    if utcnow() - created < timedelta(seconds=STALE_SECONDS):
        raise HTTPException(409, [errors.error(LOC, "a request with this Idempotency-Key is still being "
                                                    "processed; retry in a few seconds", "conflict")])
    rec.created_at = utcnow()  # the first request died mid-way: take its claim over
    session.commit()
    return rec


def once(session: Session, key: ApiKey, *, scope: str, idem: str | None, digest: str,
         create: Callable[[], Any], status_code: int) -> Any:
    """`create()` (which commits its own work), at most once per (workspace, scope, idem)."""
    if idem is None:
        return create()
    claim = _claim(session, key, scope, idem, digest)
    if isinstance(claim, JSONResponse):
        return claim
    claim_id = claim.id
    try:
        result = create()
    except BaseException:
        session.rollback()
        stale = session.get(IdempotencyRecord, claim_id)
        if stale is not None:
            session.delete(stale)
            session.commit()
        raise
    rec = session.get(IdempotencyRecord, claim_id)
    rec.status_code, rec.response = status_code, jsonable_encoder(result)
    session.commit()
    return result
