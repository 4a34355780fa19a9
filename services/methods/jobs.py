"""Training jobs several recipes share, built from a round's read-only view (RoundData)."""
from __future__ import annotations

from typing import Any

from services.training.job import TrainJob


def gold_examples(data: Any, set_ids: list[int]) -> list[dict]:
    """SFT examples from the prompts of these sets that carry a gold reference."""
    return [{"messages": p["messages"], "response": p["reference"]}
            for p in data.prompts_of_sets(set_ids) if p["reference"]]


def pairwise_job(data: Any, cfg: Any, *, mix_previous: bool = False) -> TrainJob:
    """The policy trains on the round's stored pairs (and the previous round's, when mixing) from
    θ(t-1), with θ(t-1) as the reference."""
    rounds = [data.round_id]
    if mix_previous and data.round_number > 1:
        prev = data.previous_round_id()
        rounds += [prev] if prev else []
    policy = data.policy
    return TrainJob(kind="pairs", items=data.pairs(rounds), tcfg=cfg.train_config(data.round_number, data.total_rounds),
                    key_round=data.round_number, role="policy", init_adapter=policy["adapter"],
                    ref_adapter=policy["adapter"], parent_id=policy["version_id"],
                    stats=dict(data.metrics.get("pair_stats", {})))


def sft_from_base_job(data: Any, items: list[dict], tcfg: Any, stats: dict, **kw: Any) -> TrainJob:
    """A fresh adapter on the base θ0 trained by SFT on `items`, published as this round's policy
    (or as a version of another `role`, e.g. a judge)."""
    return TrainJob(kind="sft", items=items, tcfg=tcfg, key_round=kw.pop("key_round", data.round_number),
                    role=kw.pop("role", "policy"), parent_id=data.base_version_id, stats=stats, **kw)


def gold_sft_job(data: Any, cfg: Any) -> TrainJob:
    """SFT from the base on the gold responses of the run's prompts."""
    items = gold_examples(data, data.prompt_set_ids)
    return sft_from_base_job(data, items, cfg.train_config(data.round_number, data.total_rounds),
                             {"sft_examples": len(items)})
