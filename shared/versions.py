"""Model versions by their natural key: `base:<model>` for a base model, and
`run:<run id>:round:<t>:<role>` for what round t of a run trained for a role (`policy`,
`refiner`, ...; round 0 is a bootstrap before round 1). Training publishes under these keys;
generation and the recipes find earlier versions by them."""
from __future__ import annotations

from sqlmodel import Session

from shared import crud
from shared.models import ModelVersion


def version_key(run_id: int, round_number: int, role: str) -> str:
    return f"run:{run_id}:round:{round_number}:{role}"


def latest_role_version(session: Session, *, workspace_id: int, run_id: int, before_round: int,
                        role: str) -> ModelVersion | None:
    """The newest version a run trained for `role` in a round before `before_round` (None: none yet)."""
    for t in range(before_round - 1, -1, -1):
        v = crud.version_by_key(session, workspace_id=workspace_id, key=version_key(run_id, t, role))
        if v is not None:
            return v
    return None
