"""The conductor: a round's state machine, driven only by rows in the database.

`advance(round_id)` looks at the round's current stage: with no StageTasks yet it plans them and
enqueues them; when all are done it records the stage and moves to the next; when the last stage
is done it closes the round and opens the next one (or closes the run). Workers call it after each
StageTask and `sweep` calls it periodically (Celery beat), so a conductor that was down simply
picks up where the rows say the round stands. Advancing twice is harmless: the round row is
locked, and planning happens only when no StageTask exists for the stage.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from services.gateway import run_tracking
from services.judging.regression import regression_verdict
from services.methods import get_recipe, parse_stored_config
from services.methods.base import PlanInput
from shared import crud, logs, metrics
from shared.config import get_settings
from shared.db import session_scope
from shared.models import ModelVersion, Round, Run, StageTask, utcnow
from shared.queue import enqueue, task
from shared.round_data import RoundData

log = logging.getLogger(__name__)


def _stage_state(rnd: Round, name: str, **changes) -> None:
    stages = dict(rnd.stages or {})
    stages[name] = {**stages.get(name, {}), **changes}
    rnd.stages = stages  # reassign so the JSON column is marked dirty


def _plan_input(session: Session, run: Run, rnd: Round, config) -> PlanInput:
    prompts = crud.prompts_of_sets(session, prompt_set_ids=run.prompt_set_ids)
    evals = crud.prompts_of_sets(session, prompt_set_ids=run.eval_prompt_set_ids or [])
    return PlanInput(prompt_ids=[p.id for p in prompts], eval_prompt_ids=[p.id for p in evals],
                     round_number=rnd.number, total_rounds=run.rounds,
                     shard_size=get_settings().generation_shard_size, config=config,
                     round_id=rnd.id, data=RoundData(session, round_id=rnd.id))


def _start_eval(rounds: list[Round]) -> dict | None:
    """The held-out evaluation of the run's start, made in round 1; rounds: the run's, in order."""
    return rounds[0].metrics.get("eval_base") if rounds else None


def _policy_eval(rounds: list[Round], rnd: Round) -> dict | None:
    """The held-out evaluation of the policy this round started from: its own when round 1 made it
    (Self-Rewarding's M1, `eval_policy`), that of the round that produced it, or the start's
    evaluation when it is the base."""
    if rnd.metrics.get("eval_policy"):
        return rnd.metrics["eval_policy"]
    for r in rounds:
        if r.number < rnd.number and r.produced_version_id == rnd.policy_version_id and r.metrics.get("eval"):
            return r.metrics["eval"]
    return _start_eval(rounds)


def _gate(session: Session, run: Run, rnd: Round, config) -> dict | None:
    """Whether the round's version is adopted as the next policy (see services/judging/regression.py);
    the verdict is stored on the round as metrics.gate. None when there is nothing to judge."""
    after = rnd.metrics.get("eval")
    if not after or not rnd.produced_version_id:
        return None
    rounds = crud.rounds_of_run(session, run_id=run.id)
    verdict = regression_verdict(_policy_eval(rounds, rnd), after, start=_start_eval(rounds),
                                 max_degenerate_rate=config.max_degenerate_rate,
                                 max_limit_rate_rise=config.max_limit_rate_rise)
    paired = (verdict["paired"] or {}).get("prompt_strict_acc")
    since_start = (verdict["paired_start"] or {}).get("prompt_strict_acc")
    gate = {"regressed": verdict["regressed"], "reasons": verdict["reasons"], "note": verdict.get("note"),
            "adopted": not verdict["regressed"] or config.on_regression == "continue",
            "on_regression": config.on_regression, "compared_with_version": rnd.policy_version_id,
            "prompt_strict_change": paired, "prompt_strict_change_since_start": since_start}
    rnd.metrics = {**rnd.metrics, "gate": gate}
    if verdict["regressed"]:
        log.warning("run %s round %s regressed (%s): %s", run.id, rnd.number, config.on_regression,
                    "; ".join(verdict["reasons"]))
    return gate


def _close_round(session: Session, run: Run, rnd: Round, to_send: list, to_track: list, config=None) -> None:
    rnd.status, rnd.finished_at = "succeeded", utcnow()
    gate = _gate(session, run, rnd, config) if config is not None else None
    to_track.append(run_tracking.round_closed(session, run, rnd))
    if gate is not None and gate["regressed"] and config.on_regression == "stop":
        run.status, run.finished_at = "stopped", utcnow()
        run.error = f"stopped after round {rnd.number}: " + "; ".join(gate["reasons"])
        _promote_best(session, run)
        to_track.append(run_tracking.finished(run))
        return
    more = rnd.number < run.rounds or (run.continuous and not _stop_rule_met(session, run))
    if not more:
        run.status, run.finished_at = "succeeded", utcnow()
        _promote_best(session, run)
        to_track.append(run_tracking.finished(run))
        return
    adopted = gate is None or gate["adopted"]
    policy = (rnd.produced_version_id if adopted else None) or rnd.policy_version_id
    crud.upsert(session, Round, [{"run_id": run.id, "number": rnd.number + 1, "status": "running",
                                  "stage_index": 0, "stages": {}, "metrics": {},
                                  "policy_version_id": policy, "created_at": utcnow()}],
                keys=["run_id", "number"], update=[])
    nxt = session.exec(select(Round).where(Round.run_id == run.id, Round.number == rnd.number + 1)).one()
    to_send.append(("conductor.advance", nxt.id))


def _stop_rule_met(session: Session, run: Run) -> bool:
    rounds = crud.rounds_of_run(session, run_id=run.id)
    accs = [r.metrics.get("eval", {}).get("prompt_strict_acc") for r in rounds]
    return stop_rule_met(run.stopping or {}, [a for a in accs if a is not None], len(rounds))


def stop_rule_met(rule: dict, accs: list[float], rounds_done: int) -> bool:
    """Continuous runs stop after `max_rounds` (default 100), or when held-out strict accuracy has
    not improved by `delta` over the best earlier round for `patience` rounds (0 = never)."""
    if rounds_done >= int(rule.get("max_rounds", 100)):
        return True
    patience, delta = int(rule.get("patience", 0)), float(rule.get("delta", 0.0))
    if patience <= 0 or len(accs) <= patience:
        return False
    return max(accs[-patience:]) < max(accs[:-patience]) + delta


def _promote_best(session: Session, run: Run) -> None:
    """At the end of a run, promote the version with the best held-out strict accuracy among the
    adopted rounds' versions and the run's start (the base, evaluated in round 1); ties go to the
    later round; without evaluations, the last adopted version. When the start wins, none of the
    run's versions is promoted (the base version is shared by every run of that model)."""
    rounds = crud.rounds_of_run(session, run_id=run.id)
    candidates = [(r.metrics.get("eval", {}).get("prompt_strict_acc"), r.number, r.produced_version_id)
                  for r in rounds if r.produced_version_id and r.metrics.get("gate", {}).get("adopted", True)]
    start = _start_eval(rounds)
    if run.base_version_id and start:
        candidates.append((start.get("prompt_strict_acc"), 0, run.base_version_id))
    if not candidates:
        return

    def rank(c):  # an evaluated accuracy of 0.0 is a real 0, above "not evaluated"
        return (c[0] if c[0] is not None else -1.0, c[1])

    best = max(candidates, key=rank)[2]
    if best == run.base_version_id:  # no round beat the start: none of the run's versions is promoted
        for v in session.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)):
            v.promoted = False
        return
    crud.promote(session, version=session.get(ModelVersion, best))


def _fail(run: Run, rnd: Round, stage: str, error: str | None, to_track: list) -> None:
    rnd.status, rnd.finished_at = "failed", utcnow()
    _stage_state(rnd, stage, status="failed", error=error)
    run.status, run.finished_at = "failed", utcnow()
    run.error = f"round {rnd.number}, stage {stage}: {error}"
    to_track.append(run_tracking.finished(run))


def _advance_locked(session: Session, rnd: Round, to_send: list, to_track: list) -> None:
    run = session.get(Run, rnd.run_id)
    if rnd.status != "running":
        return
    if run.status == "cancelled":
        rnd.status, rnd.finished_at = "cancelled", utcnow()
        to_track.append(run_tracking.finished(run))
        return
    recipe = get_recipe(run.method)
    config, errors = parse_stored_config(recipe.config_cls, run.config)
    if errors:
        _fail(run, rnd, "config", str(errors), to_track)
        return
    stages = recipe.stages(config, bool(run.eval_prompt_set_ids))
    if run.status == "queued":
        run.status = "running"
        to_track.append(run_tracking.started(run))
    while rnd.stage_index < len(stages):
        stage = stages[rnd.stage_index]
        tasks = crud.stage_tasks(session, round_id=rnd.id, stage=stage.name)
        if not tasks:
            payloads = stage.plan(_plan_input(session, run, rnd, config))
            now = utcnow()
            if not payloads:
                _stage_state(rnd, stage.name, status="skipped", started_at=now.isoformat())
                rnd.stage_index += 1
                continue
            rows = [StageTask(round_id=rnd.id, stage=stage.name, shard=i, payload=p, enqueued_at=now)
                    for i, p in enumerate(payloads)]
            session.add_all(rows)
            session.flush()
            to_send.extend((stage.task, r.id) for r in rows)
            _stage_state(rnd, stage.name, status="running", started_at=now.isoformat(),
                         shards=len(rows), shards_done=0)
            return
        failed = [t for t in tasks if t.status == "failed"]
        if failed:
            _fail(run, rnd, stage.name, failed[0].error, to_track)
            return
        done = sum(t.status == "done" for t in tasks)
        _stage_state(rnd, stage.name, shards_done=done)
        if done < len(tasks):
            return
        started = min(t.started_at or t.enqueued_at for t in tasks)
        finished = max(t.finished_at for t in tasks)
        _stage_state(rnd, stage.name, status="succeeded", finished_at=finished.isoformat(),
                     seconds=round((finished - started).total_seconds(), 3))
        rnd.stage_index += 1
    _close_round(session, run, rnd, to_send, to_track, config)


@task("conductor.advance")
def advance(round_id: int) -> None:
    token = logs.bind()  # the run and round bound below end with this task, however it is called
    try:
        _advance(round_id)
    finally:
        logs.unbind(token)


def _advance(round_id: int) -> None:
    to_send: list[tuple[str, int]] = []
    to_track: list[dict] = []  # experiment-tracker events (services/gateway/run_tracking.py), sent after commit
    try:
        with session_scope() as session:
            run_id = session.exec(select(Round.run_id).where(Round.id == round_id)).first()
            if run_id is None:
                log.warning("advance: round %s does not exist", round_id)
                return
            crud.lock_run(session, run_id=run_id)  # run before round: the order cancel uses too
            rnd = crud.lock_round(session, round_id=round_id)
            logs.bind(run_id=run_id, round=rnd.number)  # for this task's records and the tasks it sends
            if rnd.status == "running":
                metrics.current_round(run_id, rnd.number)
            _advance_locked(session, rnd, to_send, to_track)
    except OperationalError:  # connection lost, deadlock: transient; the sweep advances it again
        raise
    except Exception as exc:  # a bug or bad stored state: fail the run visibly, never wedge it
        log.exception("advance of round %s failed", round_id)
        to_track = []  # the failed transaction's events never happened
        with session_scope() as session:
            rnd = session.get(Round, round_id)
            run = crud.lock_run(session, run_id=rnd.run_id)
            if rnd.status == "running":
                _fail(run, rnd, "conductor", f"{type(exc).__name__}: {exc}", to_track)
        run_tracking.send(to_track)
        return
    for name, arg in to_send:  # after commit: a worker must find the rows it is sent
        enqueue(name, arg)
    run_tracking.send(to_track)


@task("conductor.sweep")
def sweep() -> None:
    """Periodic safety net (Celery beat): advance every open round, and resend StageTasks whose
    message or worker was lost: pending ones sent more than `resend_after_seconds` ago (broker
    flushed, sender died between commit and send), and running ones whose worker stopped beating
    for `heartbeat_timeout` seconds (worker killed; shared/heartbeat.py). A resent copy of a task
    still being worked on drops itself (the per-task lock in shared/stages.py), so an early resend
    is safe."""
    settings = get_settings()
    now = utcnow()
    pending_cutoff = now - timedelta(seconds=settings.resend_after_seconds)
    dead_cutoff = now - timedelta(seconds=settings.heartbeat_timeout)
    with session_scope() as session:
        open_rounds = session.exec(select(Round.id).where(Round.status == "running")).all()
        beat = func.coalesce(StageTask.heartbeat_at, StageTask.started_at)
        # A dead task is resent once as soon as its beat is stale; if that copy is not taken up
        # (its queue busy, the message lost) it is resent again like a pending one, every
        # resend_after_seconds, not on every sweep.
        not_resent_since_beat = StageTask.enqueued_at <= beat
        stale = session.exec(select(StageTask).join(Round, Round.id == StageTask.round_id).where(
            Round.status == "running",
            ((StageTask.status == "pending") & (StageTask.enqueued_at < pending_cutoff))
            | ((StageTask.status == "running") & (beat < dead_cutoff)
               & (not_resent_since_beat | (StageTask.enqueued_at < pending_cutoff))))
        ).all()
        resend = []
        for st in stale:
            st.enqueued_at = now
            reason = "stale_heartbeat" if st.status == "running" else "pending"
            resend.append((_task_of(session, st), st.id, st.stage, reason))
            if st.status == "running":
                log.warning("stage task %s (%s) has not beaten since %s: resending", st.id, st.stage,
                            st.heartbeat_at or st.started_at)
    for name, arg, stage_name, reason in resend:
        enqueue(name, arg)
        metrics.stage_resent(stage_name, reason)
    for round_id in open_rounds:
        enqueue("conductor.advance", round_id)


def resend_open_tasks(run_id: int) -> int:
    """Send again every pending or running StageTask of the run's open rounds, then advance those
    rounds: what `sweep` would do for this run once its beats were stale, for a driver that knows
    the process that worked on them is gone (an embedded run whose process stopped: there is no beat
    and no other worker). Finished tasks keep their results; one cut off mid-way starts over.
    Returns how many tasks were sent."""
    now = utcnow()
    with session_scope() as session:
        open_rounds = session.exec(select(Round.id).where(Round.run_id == run_id, Round.status == "running")).all()
        tasks = session.exec(select(StageTask).where(StageTask.round_id.in_(open_rounds),
                                                     StageTask.status.in_(("pending", "running")))).all()
        resend = []
        for st in tasks:
            st.enqueued_at = now
            resend.append((_task_of(session, st), st.id))
    for name, arg in resend:
        enqueue(name, arg)
    for round_id in open_rounds:
        enqueue("conductor.advance", round_id)
    return len(resend)


def _task_of(session: Session, st: StageTask) -> str:
    """The task name that works on a StageTask: its stage's, in the run's recipe."""
    return next(s for s in _stages_of(session, st.round_id) if s.name == st.stage).task


def _stages_of(session: Session, round_id: int):
    rnd = session.get(Round, round_id)
    run = session.get(Run, rnd.run_id)
    recipe = get_recipe(run.method)
    config, _ = parse_stored_config(recipe.config_cls, run.config)
    return recipe.stages(config, bool(run.eval_prompt_set_ids))

