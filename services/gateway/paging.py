"""Cursor paging for the list endpoints: newest first, `limit` rows, and an opaque cursor (the
last row's id) for the next page, so a page costs the same however many rows a workspace has."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Query
from sqlmodel import Session, SQLModel, select

LimitQ = Annotated[int, Query(ge=1, le=200, description="rows per page")]
# "c<id>": the letter keeps a cursor from ever looking like a number (a number is never a cursor).
CursorQ = Annotated[Optional[str], Query(pattern=r"^c[1-9][0-9]{0,9}$", description="next_cursor of the previous page")]


def page(session: Session, model: type[SQLModel], *, workspace_id: int, limit: int,
         cursor: str | None, columns=None) -> tuple[list, str | None]:
    """(rows, next_cursor) of `model` in the workspace, newest first. `columns`: select only these
    (e.g. leave out large JSON columns a listing does not show)."""
    q = select(*columns) if columns else select(model)
    q = q.where(model.workspace_id == workspace_id)
    if cursor is not None:
        q = q.where(model.id < int(cursor[1:]))
    rows = list(session.exec(q.order_by(model.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (f"c{rows[-1].id}" if more and rows else None)
