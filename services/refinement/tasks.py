"""Refinement-queue task: tree search over refinements of one failed response.

One task per response, so a round's searches fan out over every refinement worker. The payload
says how to search: `sample_id`, `model` (the refiner, a model choice of
services/generation/versions.py), `search` (SearchConfig fields), `refine` and `judge` sampling
({temperature, max_new_tokens}, the judge also `votes`, `judge` mode and `model`, the refiner when
absent). The refiner writes rewrites and the judge model (or, for prompts with constraints under
judge verifier / hybrid, the verifier) judges them; a rewrite cut at its token limit counts as no
rewrite; every node of the tree is upserted as a RefinementNode (path
is the natural key, so a redelivered search rewrites the same rows).
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
from services.refinement.search import SearchConfig, tree_search
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


def _search(ctx: StageContext) -> None:
    p = ctx.payload
    sample_id = int(p["sample_id"])
    refine_cfg, judge_cfg = p["refine"], p["judge"]
    with session_scope() as s:
        sample = s.get(Sample, sample_id)
        prompt = s.get(Prompt, sample.prompt_id)
        votes = list(s.exec(select(Judgment).where(Judgment.sample_id == sample_id, Judgment.kind == "refiner")
                            .order_by(Judgment.vote_index)))
    refiner = model_for(ctx, p.get("model", "policy"))
    judge_model = model_for(ctx, judge_cfg["model"]) if judge_cfg.get("model") else refiner
    search = SearchConfig(**p["search"])
    seed = shard_seed(ctx.config.get("seed", 0), ctx.round_number, sample_id, 0)
    calls = {"n": 0}

    def refine(messages, text, judgment):
        calls["n"] += 1
        params = SamplingParams(n=search.branching, temperature=refine_cfg["temperature"],
                                max_new_tokens=refine_cfg["max_new_tokens"], seed=seed + calls["n"])
        out = backend().generate([refine_messages(messages, text, judgment)], refiner, params)[0]
        return [rewrite_of(c) for c in out]

    def judge(messages, texts):
        if judge_cfg.get("judge", "llm") in ("verifier", "hybrid") and prompt.constraints:
            from services.judging.verifier_judge import refiner_judgment

            found = [refiner_judgment(t, prompt.constraints, prompt.messages[-1]["content"]) for t in texts]
            return [verdict([ok], [why]) for ok, why in found]
        calls["n"] += 1
        params = SamplingParams(n=judge_cfg["votes"], temperature=judge_cfg["temperature"],
                                max_new_tokens=judge_cfg["max_new_tokens"], seed=seed + 10_000 + calls["n"])
        outs = backend().generate([judge_messages(messages, t) for t in texts], judge_model, params)
        return [verdict([parse_verdict(c.text) for c in comps], [c.text for c in comps]) for comps in outs]

    root = verdict([v.passed for v in votes], [v.rationale or "" for v in votes])
    result = tree_search(prompt.messages, sample.text, root, refine=refine, judge=judge, config=search)
    rows = [{"sample_id": sample_id, "path": n.path, "parent_path": n.parent_path, "depth": n.depth,
             "text": n.text, "passed": n.passed, "score": n.score, "judgment": n.judgment} for n in result.nodes]
    with session_scope() as s:  # a redelivered search replaces the whole tree of the earlier attempt
        s.exec(delete(RefinementNode).where(RefinementNode.sample_id == sample_id))
        crud.upsert(s, RefinementNode, rows, keys=["sample_id", "path"])
    log.info("search of sample %s: %s after %d refinements (%d nodes)", sample_id, result.stopped,
             result.refinements_used, len(result.nodes))


@task("refinement.search_sample")
def search_sample(stage_task_id: int) -> None:
    execute(stage_task_id, _search)
