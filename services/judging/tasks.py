"""Judging-queue tasks: build a round's preference pairs and evaluate a model version.

Thin, as every task: load rows, call the pure code of the method or the judges, upsert rows.
"""
from __future__ import annotations

import logging

from shared import crud
from shared.db import session_scope
from shared.models import Round
from shared.queue import task
from shared.stages import StageContext, execute

log = logging.getLogger(__name__)


def _build_pairs(ctx: StageContext) -> None:
    if ctx.method != "spin":
        raise ValueError(f"no pair builder for method {ctx.method!r}")
    from services.methods.spin import build_pairs

    with session_scope() as s:
        samples = crud.samples_of_round(s, round_id=ctx.round_id, role="policy")
        prompts = crud.prompts_by_id(s, ids=sorted({x.prompt_id for x in samples}))
        pairs, skipped = build_pairs(
            [{"id": p.id, "reference": p.reference} for p in prompts.values()],
            [{"prompt_id": x.prompt_id, "index": x.index, "text": x.text} for x in samples])
        crud.upsert_pairs(s, rows=[{"round_id": ctx.round_id, **p} for p in pairs])
        rnd = s.get(Round, ctx.round_id)
        rnd.metrics = {**rnd.metrics, "pairs": len(pairs), "pairs_skipped": skipped,
                       "samples": len(samples)}
    log.info("round %s: %d pairs (%d samples skipped)", ctx.round_number, len(pairs), skipped)


@task("judging.build_pairs")
def build_pairs(stage_task_id: int) -> None:
    execute(stage_task_id, _build_pairs)


def _evaluate(ctx: StageContext) -> None:
    """Score the greedy held-out answers of this round (and of the base, in round 1) with the
    verifier; store one verifier Judgment per sample and the aggregates on the round."""
    from services.judging.evaluation import aggregate
    from services.judging.verifier import verify

    with session_scope() as s:
        rnd = s.get(Round, ctx.round_id)
        results = {}
        for role, key in (("eval", "eval"), ("eval_base", "eval_base")):
            samples = crud.samples_of_round(s, round_id=ctx.round_id, role=role)
            if not samples:
                continue
            prompts = crud.prompts_by_id(s, ids=sorted({x.prompt_id for x in samples}))
            items, judgments = [], []
            for x in samples:
                p = prompts[x.prompt_id]
                text = p.messages[-1]["content"]
                items.append({"response": x.text, "constraints": p.constraints, "prompt": text})
                if p.constraints:
                    v = verify(x.text, p.constraints, text)
                    judgments.append({"sample_id": x.id, "kind": "verifier", "vote_index": 0,
                                      "passed": v.strict, "score": sum(v.strict_per_instruction) / len(v.strict_per_instruction),
                                      "rationale": f"loose={v.loose}"})
            crud.upsert_judgments(s, rows=judgments)
            results[key] = aggregate(items)
        rnd.metrics = {**rnd.metrics, **results}
    log.info("round %s evaluation: %s", ctx.round_number, results.get("eval"))


@task("judging.evaluate")
def evaluate(stage_task_id: int) -> None:
    execute(stage_task_id, _evaluate)
