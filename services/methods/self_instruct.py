"""Self-Rewarding's own task, `generation.self_instruct`: few-shot new prompts from the run's seed
prompts, parsed, deduplicated against the seeds, earlier rounds' prompts and each other, and stored
as this round's own prompt set. It runs on the generation queue (it samples from the policy)
under the name it always had; the worker loads it with the recipes (shared.queue.TASK_MODULES).
"""
from __future__ import annotations

import logging
import random

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


def round_requests(cfg, seeds: list[str], round_number: int, want: int) -> tuple[list[list[dict]], SamplingParams]:
    """A round's few-shot requests for new tasks (twice `want`: headroom for the answers the parser
    rejects) and their sampling, seeded by the run's seed and the round."""
    rng = random.Random(shard_seed(cfg.seed, round_number, 0, 0))
    requests = [instruct_messages(seeds, rng, cfg.few_shot) for _ in range(2 * want)]
    params = SamplingParams(n=1, temperature=cfg.instruct_temperature, top_p=cfg.instruct_top_p,
                            max_new_tokens=96, seed=shard_seed(cfg.seed, round_number, 1, 0))
    return requests, params


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
    requests, params = round_requests(cfg, seeds, ctx.round_number, want)
    outs = backend().generate(requests, model_for(ctx, "policy"), params)
    openers = task_openers(seeds) if cfg.new_prompts_like_seeds else None
    parsed = [parse_new_prompt(o[0].text, openers) for o in outs]
    new = dedupe([p for p in parsed if p], seeds + earlier, cfg.dedupe_threshold)[:want]
    log.info("self-instruct: %d requests, %d usable, %d kept", len(requests), sum(p is not None for p in parsed), len(new))
    with session_scope() as s:
        crud.create_prompt_set(s, workspace_id=ctx.workspace_id, name=f"run{ctx.run_id}-round{ctx.round_number}-self-instruct",
                               items=[{"messages": [{"role": "user", "content": t}]} for t in new],
                               source_round_id=ctx.round_id)
        rnd = s.get(Round, ctx.round_id)
        rnd.metrics = {**rnd.metrics, "self_instruct": {"requested": len(requests), "kept": len(new),
                                                        # no task text, or (new_prompts_like_seeds) not a request
                                                        "unparsed": sum(p is None for p in parsed)}}


@task("generation.self_instruct")
def self_instruct(stage_task_id: int) -> None:
    execute(stage_task_id, _self_instruct)
