"""Refinement-queue task: tree searches over refinements of failed responses.

One task per shard of failed responses (`sample_ids`; a single `sample_id` is read too), so a
round's searches fan out over the refinement workers, and within a task the searches run in
lockstep: each step's rewrites (and model judgments) of every search in the shard are one batched
generation call instead of one small call per search. The payload says how to search: `model`
(the refiner, a model choice of services/generation/versions.py), `search` (SearchConfig fields),
`refine` and `judge` sampling ({temperature, max_new_tokens}, the judge also `votes`, `judge` mode
and `model`, the refiner when absent). The refiner writes rewrites and the judge model (or, for
prompts with constraints under judge verifier / hybrid, the verifier) judges them; a rewrite cut at
its token limit counts as no rewrite. With `refine.mode` "hybrid", a node of a prompt with
constraints whose broken instructions all have a mechanical fix (services/curriculum/refinements.py,
the edits that bootstrap the refiner) gets that verified minimal fix as its one candidate instead of
the refiner's rewrites (the expansion still costs `branching` of the budget; its empty slots
count as dropped); a root cut at the token limit is never fixed that way (the fix would keep the
cut text as a chosen answer), nor a text unsound beyond its broken instructions (degenerate, a
leaked chat turn, the prompt restated), and everything else goes to the refiner. Every node of every tree is
upserted as a RefinementNode (path is the natural key, and a redelivered task replaces its samples'
trees).
"""
from __future__ import annotations

import logging

from sqlmodel import delete, select

from services.generation.base import SamplingParams, shard_seed
from services.generation.registry import backend
from services.generation.versions import model_for
from services.judging.degeneration import hit_limit
from services.judging.refiner import judge_messages, parse_refinement, parse_verdict, refine_messages
from services.judging.votes import verdict
from services.refinement.fixes import mechanical_fix
from services.refinement.search import SearchConfig, tree_searches
from shared import crud
from shared.db import session_scope
from shared.models import Judgment, Prompt, RefinementNode, Sample
from shared.queue import task
from shared.stages import StageContext, execute

log = logging.getLogger(__name__)


def rewrite_of(completion) -> str | None:
    """The rewrite in a refiner completion, or None when there is none or it was cut at the token
    limit: as a chosen answer a cut rewrite would teach an end of turn where the text only stopped."""
    return None if hit_limit(completion.finish_reason) else parse_refinement(completion.text)


def model_calls(refiner, judge_model, branching: int, refine_cfg: dict, judge_cfg: dict, seed: int):
    """The batched refine and judge callables of tree_searches (search.py), through the generation
    backend, and a counter of the model calls they made ({"n"}, and {"fixes"}: the mechanical fixes
    handed out instead of rewrites). Each call has its own seed.

    refine_cfg: {temperature, max_new_tokens, mode?}; judge_cfg: the same plus `votes` and the `judge` mode
    (under verifier / hybrid the verifier judges prompts with constraints). Requests carry the
    prompt as {"messages", "constraints"}."""
    mode = judge_cfg.get("judge", "llm")
    calls = {"n": 0, "fixes": 0}

    def refine_many(requests):
        answers: list = [None] * len(requests)
        if refine_cfg.get("mode") == "hybrid":
            for k, (pr, text, _) in enumerate(requests):
                fix = mechanical_fix(pr, text)
                if fix is not None:  # one candidate: the rest of the expansion's slots stay empty
                    answers[k] = [fix] + [None] * (branching - 1)
                    calls["fixes"] += 1
        asked = [k for k, a in enumerate(answers) if a is None]
        if asked:
            calls["n"] += 1
            params = SamplingParams(n=branching, temperature=refine_cfg["temperature"],
                                    max_new_tokens=refine_cfg["max_new_tokens"], seed=seed + calls["n"])
            outs = backend().generate([refine_messages(requests[k][0]["messages"], *requests[k][1:]) for k in asked],
                                      refiner, params)
            for k, out in zip(asked, outs):
                answers[k] = [rewrite_of(c) for c in out]
        return answers

    def judge_many(requests):
        from services.judging.verifier_judge import refiner_judgment, verifier_decides

        answers: list[list] = [[] for _ in requests]
        asked = []  # (request, text) pairs the judge model decides, in order
        for k, (pr, texts) in enumerate(requests):
            if verifier_decides(mode, pr["constraints"]):
                answers[k] = [verdict([ok], [why]) for ok, why in
                              (refiner_judgment(t, pr["constraints"], pr["messages"][-1]["content"]) for t in texts)]
            else:
                asked += [(k, t) for t in texts]
        if asked:
            calls["n"] += 1
            params = SamplingParams(n=judge_cfg["votes"], temperature=judge_cfg["temperature"],
                                    max_new_tokens=judge_cfg["max_new_tokens"], seed=seed + 10_000 + calls["n"])
            outs = backend().generate([judge_messages(requests[k][0]["messages"], t) for k, t in asked],
                                      judge_model, params)
            for (k, _), comps in zip(asked, outs):
                answers[k].append(verdict([parse_verdict(c.text) for c in comps], [c.text for c in comps]))
        return answers

    return refine_many, judge_many, calls


def _search(ctx: StageContext) -> None:
    p = ctx.payload
    ids = [int(i) for i in (p.get("sample_ids") or [p["sample_id"]])]
    refine_cfg, judge_cfg = p["refine"], p["judge"]
    with session_scope() as s:
        jobs = []
        for sample_id in ids:
            sample = s.get(Sample, sample_id)
            prompt = s.get(Prompt, sample.prompt_id)
            votes = list(s.exec(select(Judgment).where(Judgment.sample_id == sample_id, Judgment.kind == "refiner")
                                .order_by(Judgment.vote_index)))
            cut_root = sample.text if hit_limit(sample.finish_reason) else None
            jobs.append(({"messages": prompt.messages, "constraints": prompt.constraints, "cut_root": cut_root},
                         sample.text, verdict([v.passed for v in votes], [v.rationale or "" for v in votes])))
    refiner = model_for(ctx, p.get("model", "policy"))
    judge_model = model_for(ctx, judge_cfg["model"]) if judge_cfg.get("model") else refiner
    search = SearchConfig(**p["search"])
    seed = shard_seed(ctx.config.get("seed", 0), ctx.round_number, ids[0], 0)
    refine_many, judge_many, calls = model_calls(refiner, judge_model, search.branching, refine_cfg, judge_cfg, seed)
    results = tree_searches(jobs, refine_many=refine_many, judge_many=judge_many, config=search)
    rows = [{"sample_id": sample_id, "path": n.path, "parent_path": n.parent_path, "depth": n.depth,
             "text": n.text, "passed": n.passed, "score": n.score, "judgment": n.judgment}
            for sample_id, result in zip(ids, results) for n in result.nodes]
    with session_scope() as s:  # a redelivered search replaces the whole trees of the earlier attempt
        s.exec(delete(RefinementNode).where(RefinementNode.sample_id.in_(ids)))
        crud.upsert(s, RefinementNode, rows, keys=["sample_id", "path"])
    log.info("searches of %d samples: %d solved, %d refinements, %d model calls, %d mechanical fixes", len(ids),
             sum(r.solution is not None for r in results), sum(r.refinements_used for r in results), calls["n"],
             calls["fixes"])


@task("refinement.search_sample")
def search_sample(stage_task_id: int) -> None:
    execute(stage_task_id, _search)
