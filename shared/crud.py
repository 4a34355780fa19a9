"""Keyword-only database helpers shared by the gateway, the conductor and the workers.

Writes that a retried task may repeat are upserts on the table's natural key (INSERT ... ON
CONFLICT), so redelivery never duplicates a row. Both Postgres and SQLite support that statement.
"""
from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel, select

from shared.models import (
    ApiKey, Judgment, ModelVersion, PreferencePair, Prompt, PromptSet, Round, Run, Sample,
    StageTask, Workspace, utcnow,
)

KEY_PREFIX = "adk_"
ROLES = ("admin", "member")


# ---------------------------------------------------------------- generic upsert
def upsert(session: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]], *,
           keys: Sequence[str], update: Sequence[str] | None = None) -> None:
    """Insert rows; where the natural key `keys` exists, overwrite the `update` columns
    (None: all non-key columns; []: keep the existing row untouched)."""
    if not rows:
        return
    rows = [{k: _storable(v) for k, v in r.items()} for r in rows]
    table = model.__table__
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(list(rows))
    cols = update if update is not None else [c for c in rows[0] if c not in keys and c != "id"]
    if cols:
        stmt = stmt.on_conflict_do_update(index_elements=list(keys),
                                          set_={c: stmt.excluded[c] for c in cols})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    session.exec(stmt)


def _storable(value: Any) -> Any:
    """Model output may hold NUL characters, which Postgres text columns refuse: replace them."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else value


# ---------------------------------------------------------------- tenancy
def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_workspace(session: Session, *, name: str) -> Workspace:
    ws = session.exec(select(Workspace).where(Workspace.name == name)).first()
    if ws is None:
        ws = Workspace(name=name)
        session.add(ws)
        session.flush()
    return ws


def create_api_key(session: Session, *, workspace_id: int, role: str,
                   expires_at: datetime | None = None) -> tuple[str, ApiKey]:
    """A new key "adk_<public id>_<secret>"; the plain key is returned once. Stored: the public
    id (as `prefix`, for listings) and the hash of the whole key, never a secret character."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    prefix = KEY_PREFIX + secrets.token_hex(4)
    plain = f"{prefix}_{secrets.token_urlsafe(32)}"
    row = ApiKey(workspace_id=workspace_id, prefix=prefix, key_hash=hash_key(plain), role=role,
                 expires_at=expires_at)
    session.add(row)
    session.flush()
    return plain, row


def lookup_api_key(session: Session, *, key: str) -> ApiKey | None:
    """The key's row whatever its state (see key_state), or None if it is unknown."""
    return session.exec(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).first()


def key_state(row: ApiKey) -> str:
    """active | revoked | expired"""
    if row.revoked:
        return "revoked"
    if row.expires_at is not None and _aware(row.expires_at) <= utcnow():
        return "expired"
    return "active"


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def list_api_keys(session: Session, *, workspace_id: int) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).where(ApiKey.workspace_id == workspace_id).order_by(ApiKey.id)))


def revoke_api_key(session: Session, *, workspace_id: int, key_id: int) -> ApiKey | None:
    """Revoke a key of the workspace (effective on its next request); None if there is no such key."""
    row = session.get(ApiKey, key_id)
    if row is None or row.workspace_id != workspace_id:
        return None
    row.revoked = True
    session.flush()
    return row


def workspace_rows(session: Session, model: type[SQLModel], *, workspace_id: int) -> list:
    """Every row of `model` that belongs to the workspace, oldest first (API listings)."""
    return list(session.exec(select(model).where(model.workspace_id == workspace_id).order_by(model.id)))


# ---------------------------------------------------------------- prompt sets
def create_prompt_set(session: Session, *, workspace_id: int, name: str, items: list[dict],
                      description: str = "", split: str = "train",
                      source_round_id: int | None = None) -> PromptSet:
    """Store a validated prompt set and its prompts in the caller's transaction (all or nothing)."""
    ps = PromptSet(workspace_id=workspace_id, name=name, description=description, split=split,
                   size=len(items), source_round_id=source_round_id)
    session.add(ps)
    session.flush()
    session.add_all([Prompt(prompt_set_id=ps.id, position=i, **item) for i, item in enumerate(items)])
    session.flush()
    return ps


def prompts_of_sets(session: Session, *, prompt_set_ids: Sequence[int]) -> list[Prompt]:
    return list(session.exec(select(Prompt).where(Prompt.prompt_set_id.in_(list(prompt_set_ids)))
                             .order_by(Prompt.prompt_set_id, Prompt.position)))


def prompts_of_round(session: Session, *, round_id: int) -> list[Prompt]:
    """Prompts a round created itself (self-instruction), in creation order."""
    return list(session.exec(select(Prompt).join(PromptSet, PromptSet.id == Prompt.prompt_set_id)
                             .where(PromptSet.source_round_id == round_id).order_by(Prompt.position)))


def prompts_by_id(session: Session, *, ids: Sequence[int]) -> dict[int, Prompt]:
    return {p.id: p for p in session.exec(select(Prompt).where(Prompt.id.in_(list(ids))))}


# ---------------------------------------------------------------- versions
def get_or_create_version(session: Session, *, workspace_id: int, key: str, **fields: Any) -> ModelVersion:
    """The ModelVersion with natural key `key`, created with `fields` if absent. Publishing twice
    (a redelivered training task) returns the first row."""
    upsert(session, ModelVersion, [{"workspace_id": workspace_id, "key": key, "metrics": {},
                                    "promoted": False, "created_at": utcnow(), **fields}],
           keys=["workspace_id", "key"], update=[])
    return session.exec(select(ModelVersion).where(ModelVersion.workspace_id == workspace_id,
                                                   ModelVersion.key == key)).one()


def base_version(session: Session, *, workspace_id: int, base_model: str) -> ModelVersion:
    return get_or_create_version(session, workspace_id=workspace_id, key=f"base:{base_model}",
                                 kind="base", base_model=base_model)


# ---------------------------------------------------------------- runs and rounds
def lock_run(session: Session, *, run_id: int) -> Run | None:
    """The run row, locked for update on Postgres and re-read (not the session's cached copy).
    Lock order everywhere: the run first, then its rounds."""
    return session.exec(select(Run).where(Run.id == run_id).with_for_update()
                        .execution_options(populate_existing=True)).first()


def lock_round(session: Session, *, round_id: int) -> Round | None:
    """The round row, locked for update on Postgres (SQLite serialises writers anyway). Callers
    that also change the run lock it first (lock_run)."""
    return session.exec(select(Round).where(Round.id == round_id).with_for_update()
                        .execution_options(populate_existing=True)).first()


def stage_tasks(session: Session, *, round_id: int, stage: str) -> list[StageTask]:
    return list(session.exec(select(StageTask).where(StageTask.round_id == round_id,
                                                     StageTask.stage == stage).order_by(StageTask.shard)))


def samples_of_round(session: Session, *, round_id: int, role: str | None = None) -> list[Sample]:
    q = select(Sample).where(Sample.round_id == round_id)
    if role is not None:
        q = q.where(Sample.role == role)
    return list(session.exec(q.order_by(Sample.prompt_id, Sample.index)))


def rounds_of_run(session: Session, *, run_id: int) -> list[Round]:
    return list(session.exec(select(Round).where(Round.run_id == run_id).order_by(Round.number)))


def upsert_samples(session: Session, *, rows: list[dict]) -> None:
    """Store samples; one already stored for (round, prompt, index, role) is kept as it is, so a
    redelivered shard never replaces what the first delivery wrote."""
    upsert(session, Sample, rows, keys=["round_id", "prompt_id", "index", "role"], update=[])


def upsert_pairs(session: Session, *, rows: list[dict]) -> None:
    upsert(session, PreferencePair, rows, keys=["round_id", "prompt_id", "source", "index"])


def upsert_judgments(session: Session, *, rows: list[dict]) -> None:
    upsert(session, Judgment, rows, keys=["sample_id", "kind", "vote_index"])


def get_run(session: Session, *, run_id: int) -> Run | None:
    return session.get(Run, run_id)


def version_by_key(session: Session, *, workspace_id: int, key: str) -> ModelVersion | None:
    return session.exec(select(ModelVersion).where(ModelVersion.workspace_id == workspace_id,
                                                   ModelVersion.key == key)).first()


def promote(session: Session, *, version: ModelVersion) -> None:
    """Mark `version` promoted, and unmark the other versions of the same run."""
    if version.run_id is not None:
        for other in session.exec(select(ModelVersion).where(ModelVersion.run_id == version.run_id,
                                                             ModelVersion.id != version.id)):
            other.promoted = False
    version.promoted = True


# ---------------------------------------------------------------- exports
def prompts_of_set(session: Session, *, prompt_set_id: int) -> list[Prompt]:
    return list(session.exec(select(Prompt).where(Prompt.prompt_set_id == prompt_set_id).order_by(Prompt.position)))


def pairs_of_run(session: Session, *, run_id: int, round_number: int | None = None) -> list[dict]:
    """A run's preference pairs (optionally one round's) as plain dicts, by round, prompt and index:
    messages, chosen, rejected, round, source, margin."""
    q = (select(PreferencePair, Prompt, Round).join(Prompt, Prompt.id == PreferencePair.prompt_id)
         .join(Round, Round.id == PreferencePair.round_id).where(Round.run_id == run_id))
    if round_number is not None:
        q = q.where(Round.number == round_number)
    rows = session.exec(q.order_by(Round.number, PreferencePair.prompt_id, PreferencePair.index)).all()
    return [{"messages": prompt.messages, "chosen": pair.chosen, "rejected": pair.rejected, "round": rnd.number,
             "source": pair.source, "margin": pair.margin} for pair, prompt, rnd in rows]
