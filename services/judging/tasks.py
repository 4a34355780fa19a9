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
from services.judging.verifier_judge import verifier_decides
from shared import crud
from shared.db import session_scope
from shared.models import EVAL_ROLES, Prompt, Round, Sample
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


def _verifier_votes(kind: str, samples: list[Sample], prompts: dict) -> list[dict]:
    """One judgment of `kind` per sample, written by the verifier in the judge's own format."""
    from services.judging.verifier_judge import refiner_judgment, rubric_judgment

    rows = []
    for x in samples:
        p = prompts[x.prompt_id]
        text = p.messages[-1]["content"]
        if kind == "refiner":
            passed, why = refiner_judgment(x.text, p.constraints, text)
            rows.append({"sample_id": x.id, "kind": kind, "vote_index": 0, "rationale": why,
                         "score": float(passed), "passed": passed})
        else:
            score, why = rubric_judgment(x.text, p.constraints, text, x.finish_reason)
            rows.append({"sample_id": x.id, "kind": kind, "vote_index": 0, "rationale": why,
                         "score": float(score), "passed": None})
    return rows


def llm_votes(ctx: StageContext, kind: str) -> None:
    """Judgments of `kind` for each sample of the shard (payload: prompt_ids, role, votes,
    temperature, max_new_tokens, model, judge). `judge` "llm" (default): `votes` sampled judgments
    from the payload's judge model; "verifier": one judgment written by the verifier for samples
    whose prompt has constraints (others get none); "hybrid": the verifier where there are
    constraints, the model elsewhere."""
    build, parse = _judges()[kind]
    p = ctx.payload
    samples, prompts = _shard_samples(ctx)
    mode = p.get("judge", "llm")
    if mode not in ("llm", "verifier", "hybrid"):
        raise ValueError(f"payload judge must be llm, verifier or hybrid, got {mode!r}")
    if mode != "llm":
        checked = [x for x in samples if verifier_decides(mode, prompts[x.prompt_id].constraints)]
        with session_scope() as s:
            crud.upsert_judgments(s, rows=_verifier_votes(kind, checked, prompts))
        samples = [x for x in samples if not verifier_decides(mode, prompts[x.prompt_id].constraints)] \
            if mode == "hybrid" else []
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


# ---------------------------------------------------------------- judge check
class JudgeBelowFloor(ValueError):
    """A self-judged round's judge measured below the configured floor, and the run says stop."""


def judge_check_verdict(report: dict, kind: str, floor: dict) -> tuple[bool, list[str]]:
    """Whether a judge-agreement report clears `floor` ({"parseable", "accuracy", "decides_on"}):
    the refiner by its balanced verdict accuracy, the rubric judge by its pairwise accuracy; that
    accuracy's point estimate, or (decides_on: lower_bound) the lower end of its 95 % interval,
    which a report without an interval cannot clear."""
    why = []
    parseable = report["parseable"].get(kind)
    accuracy, ci = _judge_accuracy(report, kind)
    if parseable is None or parseable < floor["parseable"]:
        why.append(f"parseable {0 if parseable is None else parseable:.2f} < {floor['parseable']:.2f}")
    what = "balanced verdict accuracy" if kind == "refiner" else "pairwise accuracy"
    shown = "none" if accuracy is None else f"{accuracy:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    if floor.get("decides_on", "estimate") == "lower_bound":
        if accuracy is None or not ci or ci[0] < floor["accuracy"]:
            why.append(f"{what} {shown}: the interval's lower end "
                       f"{'none' if not ci else format(ci[0], '.2f')} < {floor['accuracy']:.2f}")
    elif accuracy is None or accuracy < floor["accuracy"]:
        why.append(f"{what} {shown} < {floor['accuracy']:.2f}")
    return not why, why


def _judge_accuracy(report: dict, kind: str) -> tuple[float | None, list | None]:
    """The accuracy a judge check decides on (refiner: balanced verdict accuracy; rubric: pairwise
    accuracy) and its 95 % interval over the probe's prompts, when the report has one."""
    if kind == "refiner":
        return report["refiner"]["balanced_accuracy"], report["refiner"].get("balanced_ci95")
    return report["rubric"]["accuracy"], report["rubric"].get("ci95")


def _judge_check(ctx: StageContext) -> None:
    """Measure the judge the round is about to trust on a labelled probe of training prompts (with
    constraints: the verifier labels the model's own answers) and record it as metrics.judge_check.
    Payload: prompt_ids, model (the judge), answer_model (who answers the probe; default: the
    judge), kind (rubric | refiner), samples, votes, max_new_tokens, floor, on_weak (stop |
    verifier). Below the floor: `stop` fails the run with the numbers; `verifier` records that this
    round's judging falls back to the verifier (the recipe's judge stage reads it)."""
    from services.judging.agreement import judge_agreement

    p = ctx.payload
    with session_scope() as s:
        prompts = crud.prompts_by_id(s, ids=p["prompt_ids"])
    items = [{"prompt": q.messages[-1]["content"], "constraints": q.constraints, "reference": q.reference}
             for q in prompts.values() if q.constraints]
    kind = p["kind"]
    report = judge_agreement(items, backend=backend(), model=model_for(ctx, p["model"]),
                             answer_model=model_for(ctx, p.get("answer_model", p["model"])),
                             samples_per_prompt=int(p["samples"]), votes=int(p["votes"]),
                             max_new_tokens=int(p["max_new_tokens"]), judges=(kind,),
                             seed=shard_seed(ctx.config.get("seed", 0), ctx.round_number, 0, 13))
    ok, why = judge_check_verdict(report, kind, p["floor"])
    accuracy, ci = _judge_accuracy(report, kind)
    summary = {"kind": kind, "probe_prompts": len(items), "responses": report["responses"],
               "parseable": report["parseable"][kind], "passed": ok, "why": why, "floor": p["floor"],
               "action": "trust" if ok else p["on_weak"],
               "accuracy": accuracy, "accuracy_ci95": ci,
               "measured_on": report["refiner"]["decided"] if kind == "refiner" else report["rubric"]["pairs"],
               "by_type": {t: v[kind].get("balanced_accuracy" if kind == "refiner" else "accuracy")
                           for t, v in report["by_type"].items()}}
    with session_scope() as s:
        rnd = s.get(Round, ctx.round_id)
        rnd.metrics = {**rnd.metrics, "judge_check": summary}
    log.info("judge check (%s): %s", kind, summary)
    if not ok and p["on_weak"] == "stop":
        raise JudgeBelowFloor(f"the {kind} judge is below its floor on {len(items)} training prompts "
                              f"({'; '.join(why)}); train it first (bootstrap_judge), choose judge: verifier "
                              "or hybrid, or set on_weak_judge: verifier")


@task("judging.judge_check")
def judge_check(stage_task_id: int) -> None:
    execute(stage_task_id, _judge_check)


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
    model = model_for(ctx, EVAL_ROLES[role])
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
    """Score the greedy held-out answers of this round (and of the base, in round 1, and of a
    policy round 1 made itself) with the verifier (and the rubric judge when the run asks for it);
    store one verifier Judgment per sample and the aggregates on the round."""
    from services.judging.evaluation import aggregate
    from services.judging.verifier import verify

    results = {}
    for role in EVAL_ROLES:
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
