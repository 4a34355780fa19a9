"""Refinement-queue task: SPaR's tree search over refinements of one failed response.

One task per failed response, so a round's searches fan out over every refinement worker. The
refiner model (its latest version) writes rewrites and judges them through the generation backend;
every node of the tree is upserted as a RefinementNode (path is the natural key, so a redelivered
search rewrites the same rows).
"""
from __future__ import annotations

import logging

from sqlmodel import delete, select

from shared import crud
from shared.db import session_scope
from shared.models import Judgment, Prompt, RefinementNode, Sample
from shared.queue import task
from shared.stages import StageContext, execute

log = logging.getLogger(__name__)


def _root_judgment(votes: list[Judgment]) -> tuple[bool | None, float, str]:
    from services.judging.votes import majority

    verdicts = [v.passed for v in votes]
    parsed = [v for v in verdicts if v is not None]
    reason = next((v.rationale for v in votes if v.passed is False), votes[0].rationale if votes else "")
    return majority(verdicts), (sum(parsed) / len(parsed) if parsed else 0.0), reason or ""


def _search(ctx: StageContext) -> None:
    from services.generation.base import SamplingParams
    from services.generation.tasks import backend, model_for, shard_seed
    from services.judging.refiner import judge_messages, parse_refinement, parse_verdict, refine_messages
    from services.judging.votes import majority
    from services.refinement.search import tree_search

    cfg = ctx.recipe_config()
    sample_id = int(ctx.payload["sample_id"])
    with session_scope() as s:
        sample = s.get(Sample, sample_id)
        prompt = s.get(Prompt, sample.prompt_id)
        votes = list(s.exec(select(Judgment).where(Judgment.sample_id == sample_id, Judgment.kind == "refiner")
                            .order_by(Judgment.vote_index)))
    refiner = model_for(ctx, "refiner")
    seed = shard_seed(cfg.seed, ctx.round_number, sample_id, 0)
    calls = {"n": 0}

    def refine(messages, text, judgment):
        calls["n"] += 1
        params = SamplingParams(n=cfg.branching, temperature=cfg.refine_temperature,
                                max_new_tokens=cfg.max_new_tokens, seed=seed + calls["n"])
        out = backend().generate([refine_messages(messages, text, judgment)], refiner, params)[0]
        return [parse_refinement(c.text) for c in out]

    def judge(messages, texts):
        calls["n"] += 1
        params = SamplingParams(n=cfg.judge_votes, temperature=cfg.judge_temperature,
                                max_new_tokens=cfg.judge_max_new_tokens, seed=seed + 10_000 + calls["n"])
        outs = backend().generate([judge_messages(messages, t) for t in texts], refiner, params)
        results = []
        for comps in outs:
            verdicts = [parse_verdict(c.text) for c in comps]
            parsed = [v for v in verdicts if v is not None]
            reason = next((c.text for c, v in zip(comps, verdicts) if v is False), comps[0].text if comps else "")
            results.append((majority(verdicts), sum(parsed) / len(parsed) if parsed else 0.0, reason))
        return results

    result = tree_search(prompt.messages, sample.text, _root_judgment(votes), refine=refine, judge=judge,
                         config=cfg.search_config())
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
