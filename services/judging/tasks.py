"""Judging-queue tasks: verify samples, judge them with an LLM judge of a kind (rubric scores or
refiner verdicts, reached through the generation backend), build a round's preference pairs (with
the run's recipe's pairs hook), evaluate a version.

Thin, as every task: load rows, call the pure judging code or the recipe's hook, upsert rows. Unparseable
judgments are stored with score/passed None — counted, never scored as 0.
"""
from __future__ import annotations

import logging

from sqlmodel import select

from services.generation.base import SamplingParams, shard_seed
from services.generation.registry import backend
from services.generation.versions import model_for
from shared import crud
from shared.db import session_scope
from shared.models import Prompt, Round, Sample
from shared.queue import task
from shared.round_data import RoundData
from shared.stages import StageContext, execute

log = logging.getLogger(__name__)


def _shard_samples(ctx: StageContext) -> tuple[list[Sample], dict[int, Prompt]]:
    role = ctx.payload.get("role", "policy")
    with session_scope() as s:
        samples = list(s.exec(select(Sample).where(Sample.round_id == ctx.round_id, Sample.role == role,
                                                   Sample.prompt_id.in_(ctx.payload["prompt_ids"]))
                              .order_by(Sample.prompt_id, Sample.index)))
        prompts = crud.prompts_by_id(s, ids=ctx.payload["prompt_ids"])
    return samples, prompts


# ---------------------------------------------------------------- verifier
def _verify(ctx: StageContext) -> None:
    from services.judging.verifier import binary_reward

    samples, prompts = _shard_samples(ctx)
    rows = []
    for x in samples:
        p = prompts[x.prompt_id]
        reward = binary_reward(x.text, constraints=p.constraints, answer=p.answer,
                               prompt_text=p.messages[-1]["content"])
        rows.append({"sample_id": x.id, "kind": "verifier", "vote_index": 0, "score": reward,
                     "passed": None if reward is None else reward == 1.0, "rationale": None})
    with session_scope() as s:
        crud.upsert_judgments(s, rows=rows)


@task("judging.verify_shard")
def verify_shard(stage_task_id: int) -> None:
    execute(stage_task_id, _verify)


# ---------------------------------------------------------------- LLM judges
def _judges() -> dict:
    """Judge kind → (request builder, parser of one vote)."""
    from services.judging.refiner import judge_messages, parse_verdict
    from services.judging.rubric import parse_score, rubric_messages

    return {"rubric": (rubric_messages, parse_score), "refiner": (judge_messages, parse_verdict)}


def llm_votes(ctx: StageContext, kind: str) -> None:
    """Sample `votes` judgments of `kind` per sample of the shard from the payload's judge model
    (payload: prompt_ids, role, votes, temperature, max_new_tokens, model) and store each vote."""
    build, parse = _judges()[kind]
    p = ctx.payload
    samples, prompts = _shard_samples(ctx)
    if not samples:
        return
    requests = [build(prompts[x.prompt_id].messages, x.text) for x in samples]
    params = SamplingParams(n=int(p["votes"]), temperature=float(p["temperature"]),
                            max_new_tokens=int(p["max_new_tokens"]),
                            seed=shard_seed(ctx.config.get("seed", 0), ctx.round_number, ctx.shard, 7))
    outs = backend().generate(requests, model_for(ctx, p.get("model", "policy")), params)
    rows, unparsed = [], 0
    for x, comps in zip(samples, outs):
        for v, c in enumerate(comps):
            value = parse(c.text)
            unparsed += value is None
            rows.append({"sample_id": x.id, "kind": kind, "vote_index": v, "rationale": c.text,
                         "score": float(value) if value is not None else None,
                         "passed": value if isinstance(value, bool) else None})
    with session_scope() as s:
        crud.upsert_judgments(s, rows=rows)
    log.info("%s judge: %d votes, %d unparseable", kind, len(rows), unparsed)


@task("judging.rubric_shard")
def rubric_shard(stage_task_id: int) -> None:
    execute(stage_task_id, lambda ctx: llm_votes(ctx, "rubric"))


@task("judging.refiner_shard")
def refiner_shard(stage_task_id: int) -> None:
    execute(stage_task_id, lambda ctx: llm_votes(ctx, "refiner"))


# ---------------------------------------------------------------- pairs
def _build_pairs(ctx: StageContext) -> None:
    """The round's preference pairs, made by the run's recipe from what the round's stages wrote."""
    recipe, cfg = ctx.recipe(), ctx.recipe_config()
    if getattr(recipe, "pairs", None) is None:
        raise ValueError(f"method {ctx.method!r} makes no preference pairs; its recipe has no pairs hook")
    with session_scope() as s:
        pairs, counts = recipe.pairs(RoundData(s, round_id=ctx.round_id), cfg)
        crud.upsert_pairs(s, rows=[{"margin": None, **p, "round_id": ctx.round_id} for p in pairs])
        rnd = s.get(Round, ctx.round_id)
        rnd.metrics = {**rnd.metrics, "pairs": len(pairs), "pair_stats": counts}
    log.info("round %s: %d pairs %s", ctx.round_number, len(pairs), counts)


@task("judging.build_pairs")
def build_pairs(stage_task_id: int) -> None:
    execute(stage_task_id, _build_pairs)


# ---------------------------------------------------------------- evaluation
def _eval_judge_scores(ctx: StageContext, samples: list[Sample], prompts: dict, role: str) -> list:
    """Mean rubric score of each held-out answer, judged by the model that wrote it (None when
    no vote parsed); [] when the run does not ask for judge scores."""
    from services.judging.rubric import mean_score, parse_score, rubric_messages

    k = int(ctx.config.get("eval_judge_samples", 0))
    if k <= 0:
        return []
    model = model_for(ctx, "produced" if role == "eval" else "base")
    params = SamplingParams(n=k, temperature=0.7, max_new_tokens=int(ctx.config.get("judge_max_new_tokens", 256)),
                            seed=shard_seed(ctx.config.get("seed", 0), ctx.round_number, 0, 11))
    outs = backend().generate([rubric_messages(prompts[x.prompt_id].messages, x.text) for x in samples], model, params)
    rows, means = [], []
    for x, comps in zip(samples, outs):
        scores = [parse_score(c.text) for c in comps]
        means.append(mean_score(scores))
        rows += [{"sample_id": x.id, "kind": "rubric", "vote_index": v, "score": sc, "passed": None,
                  "rationale": c.text} for v, (c, sc) in enumerate(zip(comps, scores))]
    with session_scope() as s:
        crud.upsert_judgments(s, rows=rows)
    return means


def _evaluate(ctx: StageContext) -> None:
    """Score the greedy held-out answers of this round (and of the base, in round 1) with the
    verifier (and the rubric judge when the run asks for it); store one verifier Judgment per
    sample and the aggregates on the round."""
    from services.judging.evaluation import aggregate
    from services.judging.verifier import verify

    results = {}
    for role in ("eval", "eval_base"):
        with session_scope() as s:
            samples = crud.samples_of_round(s, round_id=ctx.round_id, role=role)
            prompts = crud.prompts_by_id(s, ids=sorted({x.prompt_id for x in samples}))
        if not samples:
            continue
        items, judgments = [], []
        for x in samples:
            p = prompts[x.prompt_id]
            text = p.messages[-1]["content"]
            v = verify(x.text, p.constraints, text) if p.constraints else None
            items.append({"response": x.text, "constraints": p.constraints, "prompt": text, "verdict": v,
                          "prompt_id": x.prompt_id, "finish_reason": x.finish_reason})
            if v is not None:
                judgments.append({"sample_id": x.id, "kind": "verifier", "vote_index": 0, "passed": v.strict,
                                  "score": sum(v.strict_per_instruction) / len(v.strict_per_instruction),
                                  "rationale": f"loose={v.loose}"})
        with session_scope() as s:
            crud.upsert_judgments(s, rows=judgments)
        judge = _eval_judge_scores(ctx, samples, prompts, role)
        results[role] = aggregate(items, judge if judge else None)
    with session_scope() as s:
        rnd = s.get(Round, ctx.round_id)
        rnd.metrics = {**rnd.metrics, **results}
    log.info("round %s evaluation: %s", ctx.round_number, results.get("eval"))


@task("judging.evaluate")
def evaluate(stage_task_id: int) -> None:
    execute(stage_task_id, _evaluate)
