"""Judging-queue tasks: verify samples, judge them with the rubric or the refiner (LLM judges reached
through the generation backend), build a round's preference pairs, evaluate a version.

Thin, as every task: load rows, call the pure judging / method code, upsert rows. Unparseable
judgments are stored with score/passed None — counted, never scored as 0.
"""
from __future__ import annotations

import logging

from sqlmodel import select

from shared import crud
from shared.db import session_scope
from shared.models import Judgment, Prompt, RefinementNode, Round, Sample
from shared.queue import task
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


# ---------------------------------------------------------------- verifier (ReST-EM)
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
def _llm_votes(ctx: StageContext, *, build, parse, votes: int, temperature: float, max_new_tokens: int,
               model: str, kind: str) -> None:
    """Sample `votes` judgments per sample from a judge model and store each parsed vote."""
    from services.generation.base import SamplingParams
    from services.generation.tasks import backend, model_for, shard_seed

    samples, prompts = _shard_samples(ctx)
    if not samples:
        return
    requests = [build(prompts[x.prompt_id].messages, x.text) for x in samples]
    params = SamplingParams(n=votes, temperature=temperature, max_new_tokens=max_new_tokens,
                            seed=shard_seed(ctx.config.get("seed", 0), ctx.round_number, ctx.shard, 7))
    outs = backend().generate(requests, model_for(ctx, model), params)
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


def _rubric(ctx: StageContext) -> None:
    from services.judging.rubric import parse_score, rubric_messages

    cfg = ctx.recipe_config()
    _llm_votes(ctx, build=rubric_messages, parse=parse_score, votes=cfg.judge_samples,
               temperature=cfg.judge_temperature, max_new_tokens=cfg.judge_max_new_tokens,
               model="judge", kind="rubric")


def _refiner(ctx: StageContext) -> None:
    from services.judging.refiner import judge_messages, parse_verdict

    cfg = ctx.recipe_config()
    _llm_votes(ctx, build=judge_messages, parse=parse_verdict, votes=cfg.judge_votes,
               temperature=cfg.judge_temperature, max_new_tokens=cfg.judge_max_new_tokens,
               model="refiner", kind="refiner")


@task("judging.rubric_shard")
def rubric_shard(stage_task_id: int) -> None:
    execute(stage_task_id, _rubric)


@task("judging.refiner_shard")
def refiner_shard(stage_task_id: int) -> None:
    execute(stage_task_id, _refiner)


# ---------------------------------------------------------------- pairs
def _pairs_spin(s, ctx) -> tuple[list[dict], dict]:
    from services.methods.spin import build_pairs

    samples = crud.samples_of_round(s, round_id=ctx.round_id, role="policy")
    prompts = crud.prompts_by_id(s, ids=sorted({x.prompt_id for x in samples}))
    pairs, skipped = build_pairs([{"id": p.id, "reference": p.reference} for p in prompts.values()],
                                 [{"prompt_id": x.prompt_id, "index": x.index, "text": x.text} for x in samples])
    return pairs, {"samples": len(samples), "pairs_skipped": skipped}


def _pairs_self_reward(s, ctx) -> tuple[list[dict], dict]:
    from services.judging.rubric import mean_score
    from services.methods.self_reward import best_worst_pairs

    samples = crud.samples_of_round(s, round_id=ctx.round_id, role="candidate")
    scores: dict[int, list] = {}
    for j in s.exec(select(Judgment).where(Judgment.sample_id.in_([x.id for x in samples]),
                                                 Judgment.kind == "rubric")):
        scores.setdefault(j.sample_id, []).append(j.score)
    cands: dict[int, list] = {}
    for x in samples:
        cands.setdefault(x.prompt_id, []).append((x.index, x.text, mean_score(scores.get(x.id, []))))
    pairs, counts = best_worst_pairs(cands)
    unparsed = sum(v is None for vs in scores.values() for v in vs)
    return pairs, {**counts, "samples": len(samples), "judgments_unparsed": unparsed}


def _pairs_spar(s, ctx) -> tuple[list[dict], dict]:
    from services.methods.spar import refined_pairs

    trees = []
    roots = s.exec(select(Sample).where(Sample.id.in_(
        select(RefinementNode.sample_id).join(Sample, Sample.id == RefinementNode.sample_id)
        .where(Sample.round_id == ctx.round_id)))).all()
    for root in roots:
        solved = s.exec(select(RefinementNode).where(RefinementNode.sample_id == root.id,
                                                     RefinementNode.passed.is_(True), RefinementNode.depth > 0)
                        .order_by(RefinementNode.id)).first()
        trees.append({"prompt_id": root.prompt_id, "sample_index": root.index, "root": root.text,
                      "solution": solved.text if solved else None})
    pairs = refined_pairs(trees)
    return pairs, {"searched": len(trees), "solved": sum(t["solution"] is not None for t in trees)}


PAIR_BUILDERS = {"spin": _pairs_spin, "self_reward": _pairs_self_reward, "spar": _pairs_spar}


def _build_pairs(ctx: StageContext) -> None:
    if ctx.method not in PAIR_BUILDERS:
        raise ValueError(f"no pair builder for method {ctx.method!r}")
    with session_scope() as s:
        pairs, counts = PAIR_BUILDERS[ctx.method](s, ctx)
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
    from services.generation.base import SamplingParams
    from services.generation.tasks import backend, model_for, shard_seed
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
            items.append({"response": x.text, "constraints": p.constraints, "prompt": text, "verdict": v})
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
