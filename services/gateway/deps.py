"""Dependencies of the API routes: a DB session and the caller's API key (its workspace)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from shared import crud
from shared.db import get_engine
from shared.models import ApiKey

DB_INT = 2**31 - 1


def get_session() -> Iterator[Session]:
    with Session(get_engine(), expire_on_commit=False) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
_bearer = HTTPBearer(auto_error=False)


def current_key(session: SessionDep,
                creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> ApiKey:
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing 'Authorization: Bearer <api key>' header",
                            headers={"WWW-Authenticate": "Bearer"})
    row = crud.lookup_api_key(session, key=creds.credentials)
    state = "unknown" if row is None else crud.key_state(row)
    if state != "active":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, f"{state} API key", headers={"WWW-Authenticate": "Bearer"})
    return row


KeyDep = Annotated[ApiKey, Depends(current_key)]


def admin_key(key: KeyDep) -> ApiKey:
    if key.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs an admin key (see the roles table in the README)")
    return key


AdminDep = Annotated[ApiKey, Depends(admin_key)]


def may_change_run(key: ApiKey, run) -> None:
    """Members change (cancel, add prompt sets to) only the runs their own key submitted."""
    if key.role != "admin" and run.created_by_key_id != key.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"run {run.id} was submitted by another key; a member "
                            "key may change only its own runs (an admin key may change any)")


def owned(session: Session, model, obj_id: int, key: ApiKey, what: str):
    """The row `obj_id` of `model` if it belongs to the caller's workspace, else 404 (another
    workspace's ids are indistinguishable from missing ones)."""
    row = session.get(model, obj_id) if 0 < obj_id <= DB_INT else None  # beyond the column: no such row
    if row is None or getattr(row, "workspace_id", None) != key.workspace_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {obj_id} not found")
    return row
