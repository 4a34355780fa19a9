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
from shared.models import ModelVersion, Round, Run, Sample
from shared.queue import task
from shared.stages import Cancelled, StageContext, execute, run_cancelled

log = logging.getLogger(__name__)


@lru_cache
def backend():
    """The worker's backend, built once per process from the settings."""
    from services.generation.registry import get_backend

    s = get_settings()
    if ":" in s.generation_backend:  # a plug-in: "package.module:factory", called with device=...
        import importlib

        module, attr = s.generation_backend.split(":", 1)
        return getattr(importlib.import_module(module), attr)(device=s.device)
    if s.generation_backend == "tgi":
        return get_backend("tgi", urls=[u for u in s.tgi_urls.split(",") if u],
                           refresh_command=s.tgi_refresh_command or None,
                           preloaded_adapters=[a for a in s.tgi_preloaded_adapters.split(",") if a] or None)
    if s.generation_backend == "openai":
        return get_backend("openai", base_url=s.openai_base_url, endpoint=s.openai_endpoint)
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
    model = model_for(ctx, ctx.payload.get("model", "policy"))
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
            crud.upsert_samples(s, rows=rows)


def version_ref(version: ModelVersion):
    from services.generation.base import ModelRef

    return ModelRef(base_model=version.base_model,
                    adapter_path=version.uri if version.kind == "adapter" else None, version_id=version.id)


def model_for(ctx: StageContext, which: str):
    """The model a stage samples from: "policy" θ(t-1), "produced" (the version this round made,
    for evaluation; the policy when the round trained nothing), "base" (θ0, the "before" of an
    evaluation), "refiner" (SPaR's refiner: its latest version, else the base) or "judge" (the
    config's judge_version_id, else the policy)."""
    from services.generation.base import ModelRef

    with session_scope() as s:
        produced = s.get(Round, ctx.round_id).produced_version_id if which == "produced" else None
        if produced is not None:
            return version_ref(s.get(ModelVersion, produced))
        if which == "base":
            return ModelRef(base_model=ctx.base_model, version_id=s.get(Run, ctx.run_id).base_version_id)
        if which == "refiner":
            for t in range(ctx.round_number - 1, 0, -1):
                v = crud.version_by_key(s, workspace_id=ctx.workspace_id, key=f"run:{ctx.run_id}:round:{t}:refiner")
                if v is not None:
                    return version_ref(v)
            return ModelRef(base_model=ctx.base_model, version_id=s.get(Run, ctx.run_id).base_version_id)
        judge_id = ctx.config.get("judge_version_id") if which == "judge" else None
        if judge_id is not None:
            version = s.get(ModelVersion, judge_id)
            if version is None or version.workspace_id != ctx.workspace_id:
                raise ValueError(f"judge_version_id {judge_id} is not a model version of this workspace")
            return version_ref(version)
    if which not in ("policy", "judge", "produced"):
        raise ValueError(f"unknown model choice {which!r}")
    return ModelRef(base_model=ctx.base_model, adapter_path=ctx.policy_adapter,
                    version_id=ctx.policy_version_id)


@task("generation.generate_shard")
def generate_shard(stage_task_id: int) -> None:
    execute(stage_task_id, _generate)


def _self_instruct(ctx: StageContext) -> None:
    """Self-Rewarding's self-instruction: few-shot new prompts from the run's seed prompts, parsed,
    deduplicated against the seeds and each other, stored as this round's own prompt set."""
    import random

    from services.generation.base import SamplingParams
    from services.methods.self_reward import dedupe, instruct_messages, parse_new_prompt
    from shared.models import PromptSet

    cfg = ctx.recipe_config()
    with session_scope() as s:
        if crud.prompts_of_round(s, round_id=ctx.round_id):
            return  # redelivered after the set was stored
        run = s.get(Run, ctx.run_id)
        seeds = [p.messages[-1]["content"] for p in crud.prompts_of_sets(s, prompt_set_ids=run.prompt_set_ids)]
        earlier = [p.messages[-1]["content"] for ps in s.exec(select(PromptSet.id).where(
            PromptSet.source_round_id.in_(select(Round.id).where(Round.run_id == ctx.run_id)))).all()
            for p in crud.prompts_of_sets(s, prompt_set_ids=[ps])]
    if not seeds:
        raise ValueError("self-instruction needs seed prompts in the run's prompt sets")
    rng = random.Random(shard_seed(cfg.seed, ctx.round_number, 0, 0))
    want = int(ctx.payload.get("count", cfg.new_prompts_per_round))
    requests = [instruct_messages(seeds, rng, cfg.few_shot) for _ in range(2 * want)]  # headroom for rejects
    params = SamplingParams(n=1, temperature=cfg.instruct_temperature, top_p=cfg.instruct_top_p,
                            max_new_tokens=96, seed=shard_seed(cfg.seed, ctx.round_number, 1, 0))
    outs = backend().generate(requests, model_for(ctx, "policy"), params)
    parsed = [parse_new_prompt(o[0].text) for o in outs]
    new = dedupe([p for p in parsed if p], seeds + earlier, cfg.dedupe_threshold)[:want]
    log.info("self-instruct: %d requests, %d parsed, %d kept", len(requests), sum(p is not None for p in parsed), len(new))
    with session_scope() as s:
        crud.create_prompt_set(s, workspace_id=ctx.workspace_id, name=f"run{ctx.run_id}-round{ctx.round_number}-self-instruct",
                               items=[{"messages": [{"role": "user", "content": t}]} for t in new],
                               source_round_id=ctx.round_id)
        rnd = s.get(Round, ctx.round_id)
        rnd.metrics = {**rnd.metrics, "self_instruct": {"requested": len(requests), "kept": len(new),
                                                        "unparsed": sum(p is None for p in parsed)}}


@task("generation.self_instruct")
def self_instruct(stage_task_id: int) -> None:
    execute(stage_task_id, _self_instruct)
