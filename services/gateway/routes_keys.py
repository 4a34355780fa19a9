"""API keys of the caller's workspace: create, list (public prefix only), revoke. Admin keys only.

A revoked or expired key is refused (401) on its very next request: every request looks its key
up in the database; nothing is cached.
"""
from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, HTTPException

from services.gateway import errors
from services.gateway.deps import DB_INT, AdminDep, SessionDep
from services.gateway.limits import StrictRoute
from services.gateway.schemas import KeyCreate, KeyCreated, KeyPublic
from shared import crud
from shared.models import ApiKey, utcnow

router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=StrictRoute,
                   responses=errors.responses(401, 403, 422))


def public(row: ApiKey) -> KeyPublic:
    return KeyPublic(id=row.id, prefix=row.prefix, role=row.role, created_at=row.created_at,
                     expires_at=row.expires_at, revoked=row.revoked, state=crud.key_state(row))


@router.post("", status_code=201, response_model=KeyCreated, responses=errors.responses(400, 413))
def create_key(body: KeyCreate, session: SessionDep, admin: AdminDep) -> KeyCreated:
    """A new key for this workspace; the response is the only time the key itself is shown."""
    expires = utcnow() + timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds else None
    plain, row = crud.create_api_key(session, workspace_id=admin.workspace_id, role=body.role, expires_at=expires)
    session.commit()
    return KeyCreated(**public(row).model_dump(), key=plain)


@router.get("", response_model=list[KeyPublic])
def list_keys(session: SessionDep, admin: AdminDep) -> list[KeyPublic]:
    return [public(k) for k in crud.list_api_keys(session, workspace_id=admin.workspace_id)]


@router.post("/{key_id}/revoke", response_model=KeyPublic, responses=errors.responses(404))
def revoke_key(key_id: int, session: SessionDep, admin: AdminDep) -> KeyPublic:
    row = crud.revoke_api_key(session, workspace_id=admin.workspace_id, key_id=key_id) if 0 < key_id <= DB_INT else None
    if row is None:
        raise HTTPException(404, f"key {key_id} not found")
    session.commit()
    return public(row)
