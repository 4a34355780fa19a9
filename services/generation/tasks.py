"""Generation tasks: sample responses for one shard of prompts and upsert them as Samples.

Progress is committed batch by batch, and a redelivered shard only generates the (prompt, index)
pairs that are still missing, so a worker killed mid-shard loses at most one batch of work and a
round never holds two samples for one (prompt, index, role).
"""
from __future__ import annotations

import logging
from functools import lru_cache

from sqlmodel import select

from shared import crud
from shared.config import get_settings
from shared.db import session_scope
from shared.models import ModelVersion, Round, Sample
from shared.queue import task
from shared.stages import Cancelled, StageContext, execute, run_cancelled

log = logging.getLogger(__name__)


@lru_cache
def backend():
    """The worker's backend, built once per process from the settings."""
    from services.generation.registry import get_backend

    s = get_settings()
    if s.generation_backend == "tgi":
        return get_backend("tgi", urls=[u for u in s.tgi_urls.split(",") if u])
    if s.generation_backend == "openai":
        return get_backend("openai", base_url=s.openai_base_url)
    return get_backend("local", device=s.device)


def shard_seed(base_seed: int, round_number: int, shard: int, batch: int) -> int:
    """Distinct, reproducible seeds per round, shard and batch."""
    return (base_seed * 1_000_003 + round_number * 10_007 + shard * 101 + batch) % (2**31)


def _generate(ctx: StageContext) -> None:
    from services.generation.base import SamplingParams

    cfg = ctx.recipe_config()
    n = int(ctx.payload.get("n", getattr(cfg, "samples_per_prompt", 1)))
    role = ctx.payload.get("role", "policy")
    ids = list(ctx.payload["prompt_ids"])
    with session_scope() as s:
        prompts = crud.prompts_by_id(s, ids=ids)
        have = set(s.exec(select(Sample.prompt_id, Sample.index).where(
            Sample.round_id == ctx.round_id, Sample.role == role, Sample.prompt_id.in_(ids))).all())
    todo = [pid for pid in ids if any((pid, i) not in have for i in range(n))]
    if len(todo) < len(ids):
        log.info("shard %s: %d of %d prompts already sampled (redelivery)", ctx.shard, len(ids) - len(todo), len(ids))
    model = _model_for(ctx, ctx.payload.get("model", "policy"))
    greedy = bool(ctx.payload.get("greedy", False))
    batch_size = max(1, get_settings().generation_batch_size)
    for b, start in enumerate(range(0, len(todo), batch_size)):
        if run_cancelled(ctx.run_id):
            raise Cancelled()
        batch = todo[start:start + batch_size]
        params = SamplingParams(n=n, temperature=0.0 if greedy else cfg.temperature,
                                top_p=1.0 if greedy else cfg.top_p, top_k=0 if greedy else getattr(cfg, "top_k", 0),
                                max_new_tokens=cfg.max_new_tokens,
                                seed=shard_seed(cfg.seed, ctx.round_number, ctx.shard, b))
        outs = backend().generate([prompts[p].messages for p in batch], model, params)
        rows = [{"round_id": ctx.round_id, "prompt_id": pid, "index": i, "role": role,
                 "text": c.text, "token_count": c.token_count, "finish_reason": c.finish_reason,
                 "generator_version_id": model.version_id}
                for pid, comps in zip(batch, outs) for i, c in enumerate(comps)
                if (pid, i) not in have]
        with session_scope() as s:
            crud.upsert(s, Sample, rows, keys=["round_id", "prompt_id", "index", "role"], update=[])


def _model_for(ctx: StageContext, which: str):
    """The policy θ(t-1) the round samples from, or the version the round produced (evaluation)."""
    from services.generation.base import ModelRef

    if which == "policy":
        return ModelRef(base_model=ctx.base_model, adapter_path=ctx.policy_adapter,
                        version_id=ctx.policy_version_id)
    with session_scope() as s:
        version = s.get(ModelVersion, s.get(Round, ctx.round_id).produced_version_id)
        if version is None:
            raise ValueError(f"round {ctx.round_number} has produced no version to sample from")
        return ModelRef(base_model=version.base_model,
                        adapter_path=version.uri if version.kind == "adapter" else None, version_id=version.id)


@task("generation.generate_shard")
def generate_shard(stage_task_id: int) -> None:
    execute(stage_task_id, _generate)
