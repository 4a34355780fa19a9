"""The life of one StageTask inside a worker: claim it, do the work, record the outcome, and wake
the conductor. Every stage task goes through `execute`, so all of them are idempotent the same way:
a task that is already done is skipped, a redelivered one reruns its (upserting) work, and a
cancelled run does no more work.
"""
from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from shared import metrics
from shared.crud import get_run
from shared.db import get_engine, session_scope
from shared.heartbeat import heartbeat
from shared.logs import log_context
from shared.models import ModelVersion, Round, StageTask, utcnow
from shared.queue import enqueue
from shared.recipes import recipe_for

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """Raised inside a task when its run was cancelled meanwhile."""


# Errors worth another attempt later (a server or the database briefly gone). The generation
# backends' TransientBackendError is a ConnectionError. Anything else fails the StageTask at once.
TRANSIENT = (ConnectionError, TimeoutError, OperationalError)
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class StageContext:
    stage_task_id: int
    stage: str
    shard: int
    payload: dict
    round_id: int
    round_number: int
    run_id: int
    workspace_id: int
    method: str
    config: dict
    total_rounds: int
    base_model: str
    policy_version_id: int | None
    policy_adapter: str | None  # LoRA dir of the policy θ(t-1); None when it is the base

    def recipe(self) -> Any:
        """The run's recipe (see shared/recipes.py)."""
        return recipe_for(self.method)

    def recipe_config(self) -> Any:
        """The run's method config, validated again by its recipe."""
        try:
            return self.recipe().load_config(self.config)
        except ValueError as exc:
            raise ValueError(f"run {self.run_id} has an invalid stored config: {exc}") from exc


def run_cancelled(run_id: int) -> bool:
    with session_scope() as s:
        run = get_run(s, run_id=run_id)
        return run is None or run.status == "cancelled"


def _claim(stage_task_id: int) -> StageContext | None:
    with session_scope() as s:
        st = s.get(StageTask, stage_task_id)
        if st is None:
            log.warning("stage task %s does not exist; dropping", stage_task_id)
            return None
        rnd = s.get(Round, st.round_id)
        run = get_run(s, run_id=rnd.run_id)
        if st.status == "done" or run.status in ("cancelled", "failed") or rnd.status != "running":
            return None
        now = utcnow()
        st.status, st.attempts, st.started_at, st.heartbeat_at, st.error = "running", st.attempts + 1, now, now, None
        policy = s.get(ModelVersion, rnd.policy_version_id) if rnd.policy_version_id else None
        return StageContext(
            stage_task_id=st.id, stage=st.stage, shard=st.shard, payload=dict(st.payload or {}),
            round_id=rnd.id, round_number=rnd.number, run_id=run.id, workspace_id=run.workspace_id,
            method=run.method, config=dict(run.config), total_rounds=0 if run.continuous else run.rounds,
            base_model=run.base_model, policy_version_id=rnd.policy_version_id,
            policy_adapter=policy.uri if policy is not None and policy.kind == "adapter" else None,
        )


def _attempts(stage_task_id: int) -> int:
    with session_scope() as s:
        return s.get(StageTask, stage_task_id).attempts


def _release(stage_task_id: int, *, error: str) -> None:
    with session_scope() as s:
        st = s.get(StageTask, stage_task_id)
        st.status, st.error, st.enqueued_at = "pending", error, utcnow()


def _finish(stage_task_id: int, *, error: str | None) -> int:
    with session_scope() as s:
        st = s.get(StageTask, stage_task_id)
        st.status = "failed" if error else "done"
        st.error = error
        st.finished_at = utcnow()
        return st.round_id


LOCK_CLASS = 7301  # advisory-lock namespace of stage tasks


@contextmanager
def exclusive(stage_task_id: int) -> Iterator[bool]:
    """Whether this process may work on the StageTask: on Postgres a session-level advisory lock
    held for the whole work, so a second delivery of the same task (a resend, a redelivery while
    the first is alive) backs off; the lock dies with the worker's connection, so a redelivery after
    a crash proceeds. SQLite (embedded mode) has a single in-process executor: always True."""
    engine = get_engine()
    if engine.dialect.name != "postgresql":
        yield True
        return
    with engine.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:c, :k)"), {"c": LOCK_CLASS, "k": stage_task_id}).scalar()
        conn.commit()
        try:
            yield bool(got)
        finally:
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:c, :k)"), {"c": LOCK_CLASS, "k": stage_task_id})
                conn.commit()


def execute(stage_task_id: int, work: Callable[[StageContext], None]) -> None:
    """Run `work` for one StageTask with the claim/record/advance protocol described above."""
    with exclusive(stage_task_id) as mine:
        if not mine:
            log.info("stage task %s is being worked on elsewhere; dropping this delivery", stage_task_id)
            return
        _execute(stage_task_id, work)


def _execute(stage_task_id: int, work: Callable[[StageContext], None]) -> None:
    ctx = _claim(stage_task_id)
    if ctx is None:
        with session_scope() as s:
            st = s.get(StageTask, stage_task_id)
            round_id = st.round_id if st is not None else None
        if round_id is not None:
            enqueue("conductor.advance", round_id)
        return
    # Every record from here on (the services' included) says which run, round and stage it is of.
    with log_context(run_id=ctx.run_id, round=ctx.round_number, stage=ctx.stage, task_id=stage_task_id):
        _work(ctx, work)


def _work(ctx: StageContext, work: Callable[[StageContext], None]) -> None:
    stage_task_id = ctx.stage_task_id
    metrics.current_round(ctx.run_id, ctx.round_number)
    error, start = None, time.perf_counter()
    try:
        with heartbeat(stage_task_id):
            work(ctx)
    except Cancelled:
        log.info("stage task %s stopped: run %s was cancelled", stage_task_id, ctx.run_id)
        metrics.stage_finished(ctx.stage, "cancelled", time.perf_counter() - start)
        return
    except TRANSIENT as exc:
        if _attempts(stage_task_id) < MAX_ATTEMPTS:
            # Back to pending: the conductor's sweep resends it after resend_after_seconds.
            log.warning("stage task %s (%s): transient error, will be retried: %s", stage_task_id, ctx.stage, exc)
            _release(stage_task_id, error=f"{type(exc).__name__}: {exc}")
            metrics.stage_finished(ctx.stage, "retry", time.perf_counter() - start)
            metrics.stage_retried(ctx.stage)
            return
        log.exception("stage task %s (%s) failed %d times", stage_task_id, ctx.stage, MAX_ATTEMPTS)
        error = f"{type(exc).__name__} after {MAX_ATTEMPTS} attempts: {exc}"
    except Exception as exc:  # recorded on the row and surfaced on the run; the conductor decides
        log.exception("stage task %s (%s) failed", stage_task_id, ctx.stage)
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
    metrics.stage_finished(ctx.stage, "failed" if error else "done", time.perf_counter() - start)
    round_id = _finish(stage_task_id, error=error)
    enqueue("conductor.advance", round_id)
