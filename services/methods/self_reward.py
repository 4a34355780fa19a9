"""Self-Rewarding Language Models (Yuan et al., 2024, arXiv 2401.10020).

M1 = SFT of the base on instruction data (IFT: the run's prompts with references) plus evaluation
data (EFT: judge requests answered with a justification and `Score: N`), done in round 1's
`bootstrap` stage when `bootstrap_sft` is on. Each round then: self-instruction (few-shot new
prompts from the seed prompts, deduplicated), N candidates per new prompt from θ(t-1), the rubric
judge (θ(t-1) itself unless `judge_version_id` names another version) sampled k times and averaged,
pairs of highest vs lowest mean score with ties dropped, and DPO from θ(t-1) with reference θ(t-1).

Departures: deduplication uses word-set Jaccard similarity instead of the paper's ROUGE-L filter;
the number of new prompts per round is small by default so that a round fits on one CPU.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from services.methods.base import (
    DataCheck, PlanInput, Recipe, SamplingFields, Stage, TrainerFields, check, evaluation_stages, register, shards,
    single,
)
from services.methods.jobs import gold_examples, pairwise_job, sft_from_base_job


@dataclass
class SelfRewardConfig(SamplingFields, TrainerFields):
    bootstrap_sft: bool = True  # round 1 first makes M1 by SFT on IFT + EFT data
    eft_prompt_set_ids: list = field(default_factory=list)  # judge-training sets (prompt → judgment)
    bootstrap_learning_rate: float = 1e-4
    new_prompts_per_round: int = 32
    few_shot: int = 8  # [8-shot]
    instruct_temperature: float = 0.6  # [0.6]
    instruct_top_p: float = 0.9  # [0.9]
    dedupe_threshold: float = 0.7  # Jaccard similarity above which a new prompt is a duplicate
    samples_per_prompt: int = 4  # N [4]
    temperature: float = 0.7  # [0.7]
    top_p: float = 0.9  # [0.9]
    max_new_tokens: int = 256
    judge_samples: int = 3  # k [3]
    judge_temperature: float = 0.7
    judge_max_new_tokens: int = 256
    judge_version_id: int | None = None  # None: the policy judges itself
    beta: float = 0.1  # [0.1]
    learning_rate: float = 1e-6  # [1e-6 → 1e-7 over training]
    SAMPLES_RANGE = (2, 64)
    SAMPLES_WHY = " (pairs need two)"

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        self.check_sampling_fields()
        check(isinstance(self.eft_prompt_set_ids, list) and all(
            type(i) is int for i in self.eft_prompt_set_ids), "eft_prompt_set_ids", "must be a list of integer ids")
        check(self.judge_version_id is None or type(self.judge_version_id) is int, "judge_version_id",
              "must be an integer model version id or null")
        check(self.bootstrap_learning_rate > 0, "bootstrap_learning_rate", "must be > 0")
        check(1 <= self.new_prompts_per_round <= 100_000, "new_prompts_per_round", "must be in 1..100000")
        check(1 <= self.few_shot <= 32, "few_shot", "must be in 1..32")
        check(self.instruct_temperature > 0, "instruct_temperature", "must be > 0")
        check(0 < self.instruct_top_p <= 1, "instruct_top_p", "must be in (0, 1]")
        check(0 < self.dedupe_threshold <= 1, "dedupe_threshold", "must be in (0, 1]")
        check(1 <= self.judge_samples <= 16, "judge_samples", "must be in 1..16")
        check(self.judge_temperature > 0, "judge_temperature", "must be > 0 (votes are sampled)")
        check(self.beta > 0, "beta", "must be > 0")
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sigmoid", beta=self.beta, learning_rate=self.learning_rate)

    def bootstrap_config(self):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.bootstrap_learning_rate)


# ---------------------------------------------------------------- self-instruction
def instruct_messages(seed_prompts: list[str], rng: random.Random, k: int) -> list[dict]:
    """A few-shot request for one new task, with k seed tasks drawn by `rng`."""
    shots = rng.sample(seed_prompts, min(k, len(seed_prompts)))
    listing = "\n".join(f"Task {i + 1}: {' '.join(p.split())}" for i, p in enumerate(shots))
    return [{"role": "user", "content":
             "Here are some tasks people ask an assistant to do:\n" + listing +
             f"\n\nWrite one new task in the same spirit but on a different subject. "
             f"Reply with the task only, starting with 'Task {len(shots) + 1}:'."}]


def parse_new_prompt(text: str) -> str | None:
    """The task text from a self-instruction answer, or None when nothing usable came back."""
    text = re.sub(r"^\s*(Task\s*\d*\s*:)\s*", "", text.strip(), flags=re.I)
    text = text.split("\nTask")[0].split("\n\n")[0].strip()
    return text if 3 <= len(text.split()) <= 200 else None


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def dedupe(candidates: list[str], existing: list[str], threshold: float) -> list[str]:
    """Keep candidates whose word-set Jaccard similarity to every existing and earlier kept prompt
    is below `threshold`."""
    kept: list[str] = []
    pool = [_words(e) for e in existing]
    for c in candidates:
        w = _words(c)
        if not w or any(len(w & o) / len(w | o) >= threshold for o in pool if o):
            continue
        kept.append(c)
        pool.append(w)
    return kept


# ---------------------------------------------------------------- pairs
def best_worst_pairs(candidates: dict[int, list[tuple[int, str, float | None]]]) -> tuple[list[dict], dict]:
    """Per prompt: chosen = highest mean judge score, rejected = lowest; prompts whose extremes tie,
    or with fewer than two scored candidates, give no pair.

    candidates: {prompt_id: [(index, text, mean score or None)]}.
    """
    pairs, ties, unscored = [], 0, 0
    for pid, cands in sorted(candidates.items()):
        scored = [(s, i, t) for i, t, s in cands if s is not None]
        if len(scored) < 2:
            unscored += 1
            continue
        best = max(scored, key=lambda x: (x[0], -x[1]))
        worst = min(scored, key=lambda x: (x[0], x[1]))
        if best[0] == worst[0]:
            ties += 1
            continue
        pairs.append({"prompt_id": pid, "index": 0, "source": "judge_best_worst", "chosen": best[2],
                      "rejected": worst[2], "margin": best[0] - worst[0]})
    return pairs, {"pairs": len(pairs), "ties_dropped": ties, "unscored_prompts": unscored}


# ---------------------------------------------------------------- hooks
def check_data(check: DataCheck) -> list[dict]:
    """The config's prompt sets (judge training data) and judge version must be the workspace's."""
    cfg = check.config
    judge = [cfg.judge_version_id] if cfg.judge_version_id is not None else []
    return (check.missing("prompt_set", cfg.eft_prompt_set_ids, ["config", "eft_prompt_set_ids"])
            + [{**e, "loc": e["loc"][:-1]} for e in check.missing("model_version", judge, ["config", "judge_version_id"])])


def round_pairs(data, cfg: SelfRewardConfig) -> tuple[list[dict], dict]:
    from services.judging.rubric import mean_score

    samples = data.samples("candidate")
    scores: dict[int, list] = {}
    for j in data.judgments("rubric", role="candidate"):
        scores.setdefault(j["sample_id"], []).append(j["score"])
    cands: dict[int, list] = {}
    for x in samples:
        cands.setdefault(x["prompt_id"], []).append((x["index"], x["text"], mean_score(scores.get(x["id"], []))))
    pairs, counts = best_worst_pairs(cands)
    unparsed = sum(v is None for vs in scores.values() for v in vs)
    return pairs, {**counts, "samples": len(samples), "judgments_unparsed": unparsed}


def training_job(data, cfg: SelfRewardConfig, role: str):
    if role == "bootstrap":  # M1: SFT of the base on instruction (IFT) and evaluation (EFT) data
        items = gold_examples(data, data.prompt_set_ids + list(cfg.eft_prompt_set_ids))
        return sft_from_base_job(data, items, cfg.bootstrap_config(), {"sft_examples": len(items)},
                                 key_round=0, sets_policy=True)
    return pairwise_job(data, cfg) if role == "policy" else None


# ---------------------------------------------------------------- stages
def _self_instruct_plan(inp: PlanInput) -> list[dict]:
    return [{"count": inp.config.new_prompts_per_round}]


def _candidate_shards(inp: PlanInput) -> list[dict]:
    ids = [p["id"] for p in inp.data.round_prompts()]
    return shards(ids, inp.shard_size, role="candidate", n=inp.config.samples_per_prompt)


def _judge_shards(inp: PlanInput) -> list[dict]:
    """Rubric votes on the candidates, by θ(t-1) itself unless the config names a judge version."""
    cfg = inp.config
    judge = f"version:{cfg.judge_version_id}" if cfg.judge_version_id is not None else "policy"
    ids = [p["id"] for p in inp.data.round_prompts()]
    return shards(ids, inp.shard_size, role="candidate", model=judge, votes=cfg.judge_samples,
                  temperature=cfg.judge_temperature, max_new_tokens=cfg.judge_max_new_tokens)


def _bootstrap_plan(inp: PlanInput) -> list[dict]:
    return [{"role": "bootstrap"}] if inp.round_number == 1 and inp.config.bootstrap_sft else []


def _stages(cfg: SelfRewardConfig, has_eval: bool) -> list[Stage]:
    return [
        Stage("bootstrap", "training.train_round", _bootstrap_plan),
        Stage("self_instruct", "generation.self_instruct", _self_instruct_plan),
        Stage("generate", "generation.generate_shard", _candidate_shards),
        Stage("judge", "judging.rubric_shard", _judge_shards),
        Stage("pairs", "judging.build_pairs", single),
        Stage("train", "training.train_round", single),
    ] + evaluation_stages(has_eval)


RECIPE = register(Recipe(method="self_reward", config_cls=SelfRewardConfig, stages=_stages, check_data=check_data,
                         pairs=round_pairs, training_job=training_job))
