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
    key = crud.find_api_key(session, key=creds.credentials)
    if key is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "unknown or revoked API key",
                            headers={"WWW-Authenticate": "Bearer"})
    return key


KeyDep = Annotated[ApiKey, Depends(current_key)]


def owned(session: Session, model, obj_id: int, key: ApiKey, what: str):
    """The row `obj_id` of `model` if it belongs to the caller's workspace, else 404 (another
    workspace's ids are indistinguishable from missing ones)."""
    row = session.get(model, obj_id)
    if row is None or getattr(row, "workspace_id", None) != key.workspace_id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {obj_id} not found")
    return row
