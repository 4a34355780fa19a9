"""Generation task: sample responses for one shard of prompts and upsert them as Samples.

The payload says what to sample: `prompt_ids`, `role` (the samples' role), `model` (a model
choice, see versions.py), `n`, `greedy`, and optionally its own `max_new_tokens` (the held-out evaluation's budget,
`eval_max_new_tokens`); the sampling settings (temperature, top_p, top_k,
max_new_tokens, samples_per_prompt, seed) come from the run's config, which every recipe's config
carries (services/methods/base.SamplingFields). Progress is committed batch by batch, and a
redelivered shard only generates the (prompt, index) pairs that are still missing, so a worker
killed mid-shard loses at most one batch of work and a round never holds two samples for one
(prompt, index, role).
"""
from __future__ import annotations

import dataclasses
import logging
import time

from sqlmodel import select

from services.generation.base import SamplingParams, shard_seed
from services.generation.registry import backend
from services.generation.versions import model_for
from shared import crud, metrics
from shared.config import get_settings
from shared.db import session_scope
from shared.models import Sample
from shared.queue import task
from shared.stages import Cancelled, StageContext, execute, run_cancelled

log = logging.getLogger(__name__)
SAMPLING_FIELDS = ("temperature", "top_p", "max_new_tokens", "seed")


def sampling_params(config: dict, *, n: int, greedy: bool, seed: int) -> SamplingParams:
    """Sampling parameters from a run's stored config (greedy decoding when asked)."""
    missing = [f for f in SAMPLING_FIELDS if f not in config]
    if missing:
        raise ValueError(f"the run's config lacks the sampling field(s) {missing}; a method that samples "
                         "has a config with SamplingFields")
    return SamplingParams(n=n, temperature=0.0 if greedy else config["temperature"],
                          top_p=1.0 if greedy else config["top_p"],
                          top_k=0 if greedy else int(config.get("top_k", 0)),
                          max_new_tokens=config["max_new_tokens"], seed=seed)


def _generate(ctx: StageContext) -> None:
    n = int(ctx.payload.get("n", ctx.config.get("samples_per_prompt", 1)))
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
    batch_size = get_settings().generation_batch_size or getattr(backend(), "batch_prompts", lambda n: len(todo))(n)
    batch_size = max(1, batch_size)
    for b, start in enumerate(range(0, len(todo), batch_size)):
        if run_cancelled(ctx.run_id):
            raise Cancelled()
        batch = todo[start:start + batch_size]
        params = sampling_params(ctx.config, n=n, greedy=greedy,
                                 seed=shard_seed(ctx.config.get("seed", 0), ctx.round_number, ctx.shard, b))
        if ctx.payload.get("max_new_tokens"):  # a shard's own budget (the held-out evaluation's)
            params = dataclasses.replace(params, max_new_tokens=int(ctx.payload["max_new_tokens"]))
        start = time.perf_counter()
        outs = backend().generate([prompts[p].messages for p in batch], model, params)
        metrics.tokens_generated(sum(c.token_count for comps in outs for c in comps), time.perf_counter() - start, role)
        rows = [{"round_id": ctx.round_id, "prompt_id": pid, "index": i, "role": role,
                 "text": c.text, "token_count": c.token_count, "finish_reason": c.finish_reason,
                 "generator_version_id": model.version_id}
                for pid, comps in zip(batch, outs) for i, c in enumerate(comps)
                if (pid, i) not in have]
        with session_scope() as s:
            crud.upsert_samples(s, rows=rows)


@task("generation.generate_shard")
def generate_shard(stage_task_id: int) -> None:
    execute(stage_task_id, _generate)
