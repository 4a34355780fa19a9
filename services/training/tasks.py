"""Training-queue task: train one role of a round and publish exactly one ModelVersion for it.

Runs on a solo-pool worker, one task at a time. What is trained on what comes from the method:
SPIN, Self-Rewarding and SPaR's actor train pairwise from θ(t-1) with θ(t-1) as reference;
ReST-EM trains SFT from the base on its verified samples; Self-Rewarding's bootstrap makes M1 by
SFT on instruction + evaluation data; SPaR's refiner trains SFT on its own judgment and refinement
traces. A redelivered task resumes from the trainer's last checkpoint, and the version's natural
key (run, round, role) means a round never publishes a role twice.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlmodel import select

from shared import artifacts, crud
from shared.db import session_scope
from shared.models import Judgment, ModelVersion, PreferencePair, Prompt, RefinementNode, Round, Run, Sample
from shared.queue import task
from shared.stages import Cancelled, StageContext, execute, run_cancelled

log = logging.getLogger(__name__)
STEP_FLUSH = 5  # write per-step metrics to the round every this many steps


@dataclass
class Job:
    """What one training task does: data, starting point, reference and where it publishes."""

    kind: str  # pairs | sft
    items: list[dict]
    tcfg: object
    key_round: int  # round number in the version key (0 = a bootstrap before round 1)
    role: str  # policy | refiner
    init_adapter: str | None = None
    ref_adapter: str | None = None
    parent_id: int | None = None
    stats: dict = field(default_factory=dict)
    sets_policy: bool = False  # the version becomes this round's policy (Self-Rewarding's M1)


# ---------------------------------------------------------------- data per method and role
def _pairs(s, round_ids: list[int]) -> list[dict]:
    rows = s.exec(select(PreferencePair, Prompt).join(Prompt, Prompt.id == PreferencePair.prompt_id)
                  .where(PreferencePair.round_id.in_(round_ids))
                  .order_by(PreferencePair.round_id, PreferencePair.prompt_id, PreferencePair.index)).all()
    return [{"messages": p.messages, "chosen": pp.chosen, "rejected": pp.rejected} for pp, p in rows]


def _pairwise_job(s, ctx: StageContext, cfg) -> Job:
    rounds = [ctx.round_id]
    if getattr(cfg, "mix_previous_pairs", False) and ctx.round_number > 1:
        prev = s.exec(select(Round.id).where(Round.run_id == ctx.run_id, Round.number == ctx.round_number - 1)).first()
        rounds += [prev] if prev else []
    return Job(kind="pairs", items=_pairs(s, rounds), tcfg=cfg.train_config(ctx.round_number, ctx.total_rounds),
               key_round=ctx.round_number, role="policy", init_adapter=ctx.policy_adapter,
               ref_adapter=ctx.policy_adapter, parent_id=ctx.policy_version_id,
               stats=dict(s.get(Round, ctx.round_id).metrics.get("pair_stats", {})))


def _rest_em_job(s, ctx: StageContext, cfg) -> Job:
    from services.methods.rest_em import select_correct

    rows = s.exec(select(Sample, Judgment).join(Judgment, Judgment.sample_id == Sample.id, isouter=True)
                  .where(Sample.round_id == ctx.round_id, Sample.role == "policy")
                  .where((Judgment.kind == "verifier") | (Judgment.id.is_(None)))).all()
    samples = [{"prompt_id": x.prompt_id, "index": x.index, "text": x.text,
                "reward": j.score if j is not None else None} for x, j in rows]
    kept, stats = select_correct(samples, cfg.max_correct_per_prompt)
    prompts = crud.prompts_by_id(s, ids=sorted({k["prompt_id"] for k in kept}))
    run = s.get(Run, ctx.run_id)
    return Job(kind="sft", items=[{"messages": prompts[k["prompt_id"]].messages, "response": k["text"]} for k in kept],
               tcfg=cfg.train_config(ctx.round_number, ctx.total_rounds), key_round=ctx.round_number,
               role="policy", parent_id=run.base_version_id, stats={**stats, "samples": len(samples)})


def _gold_examples(s, set_ids: list[int]) -> list[dict]:
    """SFT examples from the prompts of these sets that carry a gold reference."""
    return [{"messages": p.messages, "response": p.reference}
            for p in crud.prompts_of_sets(s, prompt_set_ids=set_ids) if p.reference]


def _bootstrap_job(s, ctx: StageContext, cfg) -> Job:
    run = s.get(Run, ctx.run_id)
    items = _gold_examples(s, list(run.prompt_set_ids) + list(cfg.eft_prompt_set_ids))
    return Job(kind="sft", items=items, tcfg=cfg.bootstrap_config(), key_round=0, role="policy",
               parent_id=run.base_version_id, sets_policy=True, stats={"sft_examples": len(items)})


def _refiner_job(s, ctx: StageContext, cfg) -> Job:
    """The refiner learns from its own traces: judgments that agree with its majority verdict, and
    each refinement step on a path that ended in a correct node."""
    from services.judging.refiner import judge_messages, refine_messages
    from services.generation.tasks import model_for

    items = []
    majority = crud.majority_verdicts(s, round_id=ctx.round_id)
    samples = {x.id: x for x in crud.samples_of_round(s, round_id=ctx.round_id, role="policy")}
    prompts = crud.prompts_by_id(s, ids=sorted({x.prompt_id for x in samples.values()}))
    for j in s.exec(select(Judgment).where(Judgment.sample_id.in_(list(samples)), Judgment.kind == "refiner")
                    .order_by(Judgment.sample_id, Judgment.vote_index)):
        if j.passed is not None and j.passed == majority.get(j.sample_id) and j.rationale:
            x = samples[j.sample_id]
            items.append({"messages": judge_messages(prompts[x.prompt_id].messages, x.text), "response": j.rationale})
    n_judgments = len(items)
    for sid in {n.sample_id for n in s.exec(select(RefinementNode).where(RefinementNode.sample_id.in_(list(samples))))}:
        nodes = {n.path: n for n in s.exec(select(RefinementNode).where(RefinementNode.sample_id == sid))}
        solved = sorted((n for n in nodes.values() if n.passed and n.depth > 0), key=lambda n: n.id)
        node = solved[0] if solved else None
        while node is not None and node.parent_path is not None:
            parent = nodes[node.parent_path]
            msgs = refine_messages(prompts[samples[sid].prompt_id].messages, parent.text, parent.judgment or "")
            items.append({"messages": msgs, "response": f"Refined response:\n{node.text}"})
            node = parent
    previous = model_for(ctx, "refiner")
    return Job(kind="sft", items=items, tcfg=cfg.refiner_config(), key_round=ctx.round_number, role="refiner",
               init_adapter=previous.adapter_path, parent_id=previous.version_id,
               stats={"judgment_examples": n_judgments, "refinement_examples": len(items) - n_judgments})


def _sft_job(s, ctx: StageContext, cfg) -> Job:
    run = s.get(Run, ctx.run_id)
    items = _gold_examples(s, list(run.prompt_set_ids))
    return Job(kind="sft", items=items, tcfg=cfg.train_config(ctx.round_number, ctx.total_rounds),
               key_round=ctx.round_number, role="policy", parent_id=run.base_version_id,
               stats={"sft_examples": len(items)})


def _job(s, ctx: StageContext, cfg) -> Job:
    role = ctx.payload.get("role", "policy")
    if role == "bootstrap":
        return _bootstrap_job(s, ctx, cfg)
    if ctx.method == "sft":
        return _sft_job(s, ctx, cfg)
    if role == "refiner":
        return _refiner_job(s, ctx, cfg)
    if ctx.method == "rest_em":
        return _rest_em_job(s, ctx, cfg)
    return _pairwise_job(s, ctx, cfg)


# ---------------------------------------------------------------- running and publishing
def _mean_margin(base: str, adapter: str | None, pairs: list[dict], cfg) -> float:
    """Mean log π(chosen|x) − log π(rejected|x) under base(+adapter)."""
    from services.training.trainer import sequence_logprobs

    ex = [{"messages": p["messages"], "response": r} for p in pairs for r in (p["chosen"], p["rejected"])]
    lps = sequence_logprobs(base_model=base, adapter=adapter, examples=ex, config=cfg)
    return sum(c - r for c, r in zip(lps[0::2], lps[1::2])) / len(pairs)


class _StepRecorder:
    """Collects the trainer's per-step metrics into the round, and stops on cancel."""

    def __init__(self, ctx: StageContext, key: str):
        self.ctx, self.key, self.steps = ctx, key, []

    def __call__(self, metrics: dict) -> None:
        self.steps.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()})
        if len(self.steps) % STEP_FLUSH == 0:
            self.flush()
            if run_cancelled(self.ctx.run_id):
                raise Cancelled()

    def flush(self) -> None:
        with session_scope() as s:
            rnd = s.get(Round, self.ctx.round_id)
            rnd.metrics = {**rnd.metrics, self.key: list(self.steps)}


def _publish(s, ctx: StageContext, job: Job, version: ModelVersion) -> None:
    rnd = s.get(Round, ctx.round_id)
    if job.sets_policy:
        rnd.policy_version_id = version.id
    elif job.role == "policy":
        rnd.produced_version_id = version.id
    rnd.metrics = {**rnd.metrics, _label(job): version.metrics}


def _label(job: Job) -> str:
    """Where a job's metrics live on the round."""
    return {"refiner": "train_refiner"}.get(job.role, "bootstrap" if job.sets_policy else "train")


def _train(ctx: StageContext) -> None:
    from services.training.trainer import train_pairs, train_sft

    cfg = ctx.recipe_config()
    with session_scope() as s:
        job = _job(s, ctx, cfg)
        key = f"run:{ctx.run_id}:round:{job.key_round}:{job.role}"
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
            rnd.metrics = {**rnd.metrics, _label(job): {"skipped": "no training data", **job.stats}}
        return
    out_dir = artifacts.version_dir(ctx.workspace_id, ctx.run_id, job.key_round, job.role)
    ckpt = artifacts.checkpoint_dir(ctx.workspace_id, ctx.run_id, job.key_round, job.role)
    t0 = time.monotonic()
    recorder = _StepRecorder(ctx, f"{job.role}_steps" if job.role != "policy" else "train_steps")
    metrics: dict = {**job.stats, "examples": len(job.items)}
    if job.kind == "pairs":
        metrics["logp_margin_before"] = _mean_margin(ctx.base_model, ctx.policy_adapter, job.items, job.tcfg)
        summary = train_pairs(base_model=ctx.base_model, pairs=job.items, out_dir=out_dir, config=job.tcfg,
                              init_adapter=job.init_adapter, ref_adapter=job.ref_adapter,
                              checkpoint_dir=ckpt, on_step=recorder)
        metrics["logp_margin_after"] = _mean_margin(ctx.base_model, str(out_dir), job.items, job.tcfg)
    else:
        summary = train_sft(base_model=ctx.base_model, examples=job.items, out_dir=out_dir, config=job.tcfg,
                            init_adapter=job.init_adapter, checkpoint_dir=ckpt, on_step=recorder)
    recorder.flush()
    metrics.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
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
