"""Training-queue task: train one job of a round and publish exactly one ModelVersion for it.

Runs on a solo-pool worker, one task at a time. What is trained on what (the data, the starting
adapter, the reference, the role) is the run's recipe's answer: its `training_job` hook gets a
read-only view of the round and the payload's `role` and returns a TrainJob. A redelivered task
resumes from the trainer's last checkpoint, and the version's natural key (run, round, role) means
a round never publishes a role twice.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from services.training.job import TrainJob, metrics_label
from shared import artifacts, crud
from shared import metrics as prom  # `metrics` here is a version's metrics dict
from shared.config import get_settings
from shared.db import session_scope
from shared.models import ModelVersion, Round, Run
from shared.queue import task
from shared.round_data import RoundData
from shared.stages import Cancelled, StageContext, execute, run_cancelled
from shared.tracking import RunTracker, TrackedRun, run_tracker, step_rows
from shared.versions import version_key

log = logging.getLogger(__name__)
STEP_FLUSH = 5  # write per-step metrics to the round every this many steps


# ---------------------------------------------------------------- running and publishing
def _mean_margin(base: str, adapter: str | None, pairs: list[dict], cfg) -> float:
    """Mean log π(chosen|x) − log π(rejected|x) under base(+adapter), each side encoded as training
    encodes it (no end-of-turn after a cut answer, none after a rejected one unless scored)."""
    from services.training.trainer import pair_ends, sequence_logprobs

    ex = [{"messages": p["messages"], "response": p[side], "ended": end}
          for p in pairs for side, end in zip(("chosen", "rejected"), pair_ends(p, cfg))]
    lps = sequence_logprobs(base_model=base, adapter=adapter, examples=ex, config=cfg)
    return sum(c - r for c, r in zip(lps[0::2], lps[1::2])) / len(pairs)


class _StepRecorder:
    """Collects the trainer's per-step metrics into the round (and the run's experiment tracker, at
    a global step continuing the earlier rounds' steps), and stops on cancel."""

    def __init__(self, ctx: StageContext, key: str, kind: str, tracker: RunTracker | None = None, offset: int = 0):
        self.ctx, self.key, self.kind, self.steps = ctx, key, kind, []
        self.tracker, self.offset, self.tracked = tracker, offset, 0

    def __call__(self, metrics: dict) -> None:
        self.steps.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
        prom.training_step(self.kind)
        if len(self.steps) % STEP_FLUSH == 0:
            self.flush()
            if run_cancelled(self.ctx.run_id):
                raise Cancelled()

    def flush(self) -> None:
        with session_scope() as s:
            rnd = s.get(Round, self.ctx.round_id)
            rnd.metrics = {**rnd.metrics, self.key: list(self.steps)}
        if self.tracker:
            self.tracker.log_metrics(step_rows(self.steps[self.tracked:], self.key.removesuffix("_steps"), self.offset))
            self.tracked = len(self.steps)


def _tracking(s, ctx: StageContext, key: str) -> tuple[RunTracker, int]:
    """The run's tracker, and the steps of `key` earlier rounds recorded (the global step offset)."""
    run = s.get(Run, ctx.run_id)
    tracker = run_tracker(get_settings(), TrackedRun(run.id, run.method, run.created_at), ctx.config.get("tracking"))
    offset = sum(len(r.metrics.get(key) or []) for r in crud.rounds_of_run(s, run_id=run.id)
                 if r.number < ctx.round_number)
    return tracker, offset


def _publish(s, ctx: StageContext, job: TrainJob, version: ModelVersion) -> None:
    rnd = s.get(Round, ctx.round_id)
    if job.sets_policy:
        rnd.policy_version_id = version.id
    elif job.role == "policy":
        rnd.produced_version_id = version.id
    rnd.metrics = {**rnd.metrics, metrics_label(job): version.metrics}


def _job(s, ctx: StageContext) -> TrainJob:
    job = ctx.recipe().training_job(RoundData(s, round_id=ctx.round_id), ctx.recipe_config(),
                                    ctx.payload.get("role", "policy"))
    if job is None:
        raise ValueError(f"method {ctx.method!r} trains nothing for role {ctx.payload.get('role', 'policy')!r}")
    return job


def _train(ctx: StageContext) -> None:
    from services.training.trainer import train_pairs, train_sft

    with session_scope() as s:
        job = _job(s, ctx)
        key = version_key(ctx.run_id, job.key_round, job.role)
        done = crud.version_by_key(s, workspace_id=ctx.workspace_id, key=key)
        if done is not None and done.uri and Path(done.uri).exists():
            _publish(s, ctx, job, done)  # a redelivered task after the version was published
            return
    if not job.items:
        # Nothing to learn from (e.g. a judge too weak to give one parseable score): the round keeps
        # its model, says why, and the run goes on (the next round samples from the same policy).
        log.warning("round %s: no training data for %s (%s); keeping the model", ctx.round_number, job.role, job.stats)
        with session_scope() as s:
            rnd = s.get(Round, ctx.round_id)
            rnd.metrics = {**rnd.metrics, metrics_label(job): {"skipped": "no training data", **job.stats}}
        return
    out_dir = artifacts.version_dir(ctx.workspace_id, ctx.run_id, job.key_round, job.role)
    ckpt = artifacts.checkpoint_dir(ctx.workspace_id, ctx.run_id, job.key_round, job.role)
    t0 = time.monotonic()
    steps_key = f"{job.role}_steps" if job.role != "policy" else "train_steps"
    with session_scope() as s:
        tracker, offset = _tracking(s, ctx, steps_key)
    recorder = _StepRecorder(ctx, steps_key, job.kind, tracker, offset)
    metrics: dict = {**job.stats, "examples": len(job.items)}
    if job.kind == "pairs":
        # When the reference is the policy the round starts from (SPIN, Self-Rewarding, SPaR), the
        # trainer's reference pass already measures the margin before training, and the trainer
        # scores the pairs once more with the trained policy before it lets go of the model: no
        # separate passes (they took 270 of a SPIN round's 698 training seconds at 200 pairs).
        ref_is_start = job.ref_adapter == ctx.policy_adapter
        if not ref_is_start:
            metrics["logp_margin_before"] = _mean_margin(ctx.base_model, ctx.policy_adapter, job.items, job.tcfg)
        summary = train_pairs(base_model=ctx.base_model, pairs=job.items, out_dir=out_dir, config=job.tcfg,
                              init_adapter=job.init_adapter, ref_adapter=job.ref_adapter,
                              checkpoint_dir=ckpt, on_step=recorder)
        if ref_is_start:
            metrics["logp_margin_before"] = summary["reference_margin"]
        metrics["logp_margin_after"] = summary["policy_margin"]  # scored by the trainer before it let go of the model
    else:
        summary = train_sft(base_model=ctx.base_model, examples=job.items, out_dir=out_dir, config=job.tcfg,
                            init_adapter=job.init_adapter, checkpoint_dir=ckpt, on_step=recorder)
    recorder.flush()
    per_s = summary.get("pairs_per_s", summary.get("examples_per_s"))
    if per_s is not None and summary.get("seconds"):
        prom.training_finished(job.kind, items=per_s * summary["seconds"], seconds=summary["seconds"])
    metrics.update({k: v for k, v in summary.items()  # the margins are logp_margin_before / _after
                    if isinstance(v, (int, float)) and k not in ("reference_margin", "policy_margin")})
    if summary.get("guard_stop"):  # stopped early by a training guard: the reason goes with the version
        metrics["guard_stop"] = summary["guard_stop"]
        log.warning("round %s: training stopped early by a guard: %s", ctx.round_number, summary["guard_stop"])
    metrics["train_seconds"] = round(time.monotonic() - t0, 3)
    with session_scope() as s:
        version = crud.get_or_create_version(
            s, workspace_id=ctx.workspace_id, key=key, kind="adapter", base_model=ctx.base_model,
            uri=str(out_dir), run_id=ctx.run_id, round_number=job.key_round, parent_id=job.parent_id)
        version.metrics = metrics
        _publish(s, ctx, job, version)
    shutil.rmtree(ckpt, ignore_errors=True)  # published: a redelivery now finds the version instead


@task("training.train_round")
def train_round(stage_task_id: int) -> None:
    execute(stage_task_id, _train)


# ---------------------------------------------------------------- model export
def export_version(version_id: int, out_dir: Path, dtype: str = "auto") -> Path:
    """Merge a version into a plain transformers directory at `out_dir`, with a model card from its
    run's rounds (services/training/export.py). The CLI calls this on the local database."""
    from services.training.export import merge_to_dir, model_card

    with session_scope() as s:
        v = s.get(ModelVersion, version_id)
        if v is None:
            raise ValueError(f"no model version {version_id}")
        if v.kind == "base":
            raise ValueError(f"version {version_id} is the base model {v.base_model!r} itself: nothing to merge")
        run = s.get(Run, v.run_id) if v.run_id else None
        version = v.model_dump(mode="json")
        run_d = run.model_dump(mode="json") if run else None
        rounds = [r.model_dump(mode="json") for r in crud.rounds_of_run(s, run_id=run.id)] if run else []
    base, adapter = (version["base_model"], version["uri"]) if version["kind"] == "adapter" else (version["uri"], None)
    if adapter and not Path(adapter).exists():
        raise ValueError(f"version {version_id}'s adapter {adapter} is not in the artifact store")
    extra = {"version": version, "run": run_d and {k: run_d[k] for k in ("id", "method", "base_model", "config")}}
    return merge_to_dir(base, adapter, out_dir, card=model_card(version, run_d, rounds), dtype=dtype, extra=extra)


@task("training.export_model")
def export_model(version_id: int, dtype: str = "auto") -> None:
    """Export a version under the artifact store (shared/artifacts.export_dir): the merged
    directory, then its .tar.gz; a failure is written to error.txt (the files are the state)."""
    with session_scope() as s:
        v = s.get(ModelVersion, version_id)
        workspace_id = v.workspace_id if v is not None else None
    if workspace_id is None:
        log.warning("export of model version %s: no such version", version_id)
        return
    if artifacts.export_state(workspace_id, version_id, dtype)["status"] == "ready":
        return  # a redelivered or repeated request
    d = artifacts.export_dir(workspace_id, version_id, dtype)
    d.mkdir(parents=True, exist_ok=True)
    (d / "error.txt").unlink(missing_ok=True)
    try:
        model_dir = export_version(version_id, d / artifacts.export_name(version_id), dtype)
        artifacts.tar_gz(model_dir, d / f"{model_dir.name}.tar.gz")
    except Exception as exc:  # recorded for the API to report; a retry is a new request
        log.exception("export of model version %s failed", version_id)
        (d / "error.txt").write_text(f"{type(exc).__name__}: {exc}", encoding="utf-8")
