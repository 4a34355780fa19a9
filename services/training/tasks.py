"""Training-queue task: train the round's policy on its pairs and publish one ModelVersion.

Runs on a solo-pool worker, one task at a time. A redelivered task resumes from the trainer's last
checkpoint, and the version's natural key (run, round, role) means a round never publishes twice.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlmodel import select

from shared import artifacts, crud
from shared.db import session_scope
from shared.models import ModelVersion, PreferencePair, Prompt, Round
from shared.queue import task
from shared.stages import Cancelled, StageContext, execute, run_cancelled

log = logging.getLogger(__name__)
STEP_FLUSH = 5  # write per-step metrics to the round every this many steps


def _pairs_for(ctx: StageContext, mix_previous: bool) -> list[dict]:
    with session_scope() as s:
        rounds = [ctx.round_id]
        if mix_previous and ctx.round_number > 1:
            prev = s.exec(select(Round.id).where(Round.run_id == ctx.run_id,
                                                 Round.number == ctx.round_number - 1)).first()
            rounds += [prev] if prev else []
        rows = s.exec(select(PreferencePair, Prompt).join(Prompt, Prompt.id == PreferencePair.prompt_id)
                      .where(PreferencePair.round_id.in_(rounds))
                      .order_by(PreferencePair.round_id, PreferencePair.prompt_id, PreferencePair.index)).all()
        return [{"messages": p.messages, "chosen": pp.chosen, "rejected": pp.rejected} for pp, p in rows]


def _mean_margin(base: str, adapter: str | None, pairs: list[dict], cfg) -> float:
    """Mean log π(chosen|x) − log π(rejected|x) under base(+adapter)."""
    from services.training.trainer import sequence_logprobs

    if not pairs:
        return 0.0
    ex = [{"messages": p["messages"], "response": r} for p in pairs for r in (p["chosen"], p["rejected"])]
    lps = sequence_logprobs(base_model=base, adapter=adapter, examples=ex, config=cfg)
    return sum(lps[0::2][i] - lps[1::2][i] for i in range(len(pairs))) / len(pairs)


class _StepRecorder:
    """Collects the trainer's per-step metrics into the round, and stops on cancel."""

    def __init__(self, ctx: StageContext):
        self.ctx, self.steps = ctx, []

    def __call__(self, metrics: dict) -> None:
        self.steps.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
        if len(self.steps) % STEP_FLUSH == 0:
            self.flush()
            if run_cancelled(self.ctx.run_id):
                raise Cancelled()

    def flush(self) -> None:
        with session_scope() as s:
            rnd = s.get(Round, self.ctx.round_id)
            rnd.metrics = {**rnd.metrics, "train_steps": list(self.steps)}


def _train(ctx: StageContext) -> None:
    from services.training.trainer import train_pairs

    key = f"run:{ctx.run_id}:round:{ctx.round_number}:policy"
    with session_scope() as s:
        done = s.exec(select(ModelVersion).where(ModelVersion.workspace_id == ctx.workspace_id,
                                                 ModelVersion.key == key)).first()
        if done is not None and done.uri and Path(done.uri).exists():
            s.get(Round, ctx.round_id).produced_version_id = done.id
            log.info("round %s already published version %s", ctx.round_number, done.id)
            return
    cfg = ctx.recipe_config()
    tcfg = cfg.train_config(ctx.round_number, ctx.total_rounds)
    pairs = _pairs_for(ctx, getattr(cfg, "mix_previous_pairs", False))
    if not pairs:
        raise ValueError("no preference pairs for this round: every sample matched its gold "
                         "response or no prompt has a reference")
    out_dir = artifacts.version_dir(ctx.workspace_id, ctx.run_id, ctx.round_number)
    ckpt = artifacts.checkpoint_dir(ctx.workspace_id, ctx.run_id, ctx.round_number)
    t0 = time.monotonic()
    before = _mean_margin(ctx.base_model, ctx.policy_adapter, pairs, tcfg)
    recorder = _StepRecorder(ctx)
    summary = train_pairs(base_model=ctx.base_model, pairs=pairs, out_dir=out_dir, config=tcfg,
                          init_adapter=ctx.policy_adapter, ref_adapter=ctx.policy_adapter,
                          checkpoint_dir=ckpt, on_step=recorder)
    recorder.flush()
    after = _mean_margin(ctx.base_model, str(out_dir), pairs, tcfg)
    metrics = {**{k: v for k, v in summary.items() if isinstance(v, (int, float))},
               "train_pairs": len(pairs), "logp_margin_before": before, "logp_margin_after": after,
               "train_seconds": round(time.monotonic() - t0, 3)}
    with session_scope() as s:
        version = crud.get_or_create_version(
            s, workspace_id=ctx.workspace_id, key=key, kind="adapter", base_model=ctx.base_model,
            uri=str(out_dir), run_id=ctx.run_id, round_number=ctx.round_number,
            parent_id=ctx.policy_version_id)
        version.metrics = metrics
        rnd = s.get(Round, ctx.round_id)
        rnd.produced_version_id = version.id
        rnd.metrics = {**rnd.metrics, "train": metrics}


@task("training.train_round")
def train_round(stage_task_id: int) -> None:
    execute(stage_task_id, _train)
