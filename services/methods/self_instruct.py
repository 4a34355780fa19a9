"""Self-Rewarding's own task, `generation.self_instruct`: few-shot new prompts from the run's seed
prompts, parsed, deduplicated against the seeds, earlier rounds' prompts and each other, and stored
as this round's own prompt set. It runs on the generation queue (it samples from the policy)
under the name it always had; the worker loads it with the recipes (shared.queue.TASK_MODULES).
"""
from __future__ import annotations

import logging
import random
from typing import Callable

from services.generation.base import SamplingParams, shard_seed
from services.generation.registry import backend
from services.generation.versions import model_for
from services.methods.self_reward import dedupe, instruct_messages, parse_new_prompt, task_openers
from shared import crud
from shared.db import session_scope
from shared.models import Round
from shared.queue import task
from shared.round_data import RoundData
from shared.stages import StageContext, execute

log = logging.getLogger(__name__)


def round_requests(cfg, seeds: list[str], round_number: int, want: int,
                   batch: int = 0) -> tuple[list[list[dict]], SamplingParams]:
    """One batch of a round's few-shot requests for new tasks (twice `want`: headroom for the
    answers the parser rejects) and their sampling, seeded by the run's seed, the round and the
    batch (batch 0 is the one request the stage made before it asked again)."""
    rng = random.Random(shard_seed(cfg.seed, round_number, 0, batch))
    requests = [instruct_messages(seeds, rng, cfg.few_shot) for _ in range(2 * want)]
    params = SamplingParams(n=1, temperature=cfg.instruct_temperature, top_p=cfg.instruct_top_p,
                            max_new_tokens=96, seed=shard_seed(cfg.seed, round_number, 1, batch))
    return requests, params


def collect_new_prompts(generate: Callable[[list, SamplingParams], list[str]], cfg, seeds: list[str],
                        earlier: list[str], round_number: int, want: int) -> tuple[list[str], dict]:
    """Up to `want` new prompts: batches of requests (round_requests) answered by `generate`, each
    answer parsed (parse_new_prompt, with the request filter when `new_prompts_like_seeds`) and
    deduplicated against the seeds, earlier rounds' prompts and the prompts already kept, until
    `want` are kept or `cfg.instruct_batches` batches were asked. The counts say how many requests
    were made, in how many batches, how many answers held no task (or, with the filter, no request),
    and how many prompts were kept."""
    openers = task_openers(seeds) if cfg.new_prompts_like_seeds else None
    requested, unparsed, batches, new = 0, 0, 0, []
    while batches < cfg.instruct_batches and len(new) < want:
        requests, params = round_requests(cfg, seeds, round_number, want, batches)
        parsed = [parse_new_prompt(text, openers) for text in generate(requests, params)]
        requested, unparsed, batches = requested + len(requests), unparsed + sum(p is None for p in parsed), batches + 1
        new += dedupe([p for p in parsed if p], seeds + earlier + new, cfg.dedupe_threshold)
    new = new[:want]
    return new, {"requested": requested, "batches": batches, "kept": len(new), "unparsed": unparsed}


def _self_instruct(ctx: StageContext) -> None:
    cfg = ctx.recipe_config()
    with session_scope() as s:
        data = RoundData(s, round_id=ctx.round_id)
        if data.round_prompts():
            return  # redelivered after the set was stored
        seeds = [p["messages"][-1]["content"] for p in data.run_prompts()]
        earlier = [p["messages"][-1]["content"] for p in data.run_written_prompts()]
    if not seeds:
        raise ValueError("self-instruction needs seed prompts in the run's prompt sets")
    want = int(ctx.payload.get("count", cfg.new_prompts_per_round))
    model = model_for(ctx, "policy")
    new, stats = collect_new_prompts(lambda requests, params: [o[0].text for o in backend().generate(requests, model, params)],
                                     cfg, seeds, earlier, ctx.round_number, want)
    log.info("self-instruct: %d requests in %d batches, %d unparsed, %d kept", stats["requested"], stats["batches"],
             stats["unparsed"], len(new))
    with session_scope() as s:
        crud.create_prompt_set(s, workspace_id=ctx.workspace_id, name=f"run{ctx.run_id}-round{ctx.round_number}-self-instruct",
                               items=[{"messages": [{"role": "user", "content": t}]} for t in new],
                               source_round_id=ctx.round_id)
        rnd = s.get(Round, ctx.round_id)
        rnd.metrics = {**rnd.metrics, "self_instruct": stats}


@task("generation.self_instruct")
def self_instruct(stage_task_id: int) -> None:
    execute(stage_task_id, _self_instruct)
