"""SPaR (Cheng et al., 2024, arXiv 2412.11605): self-play with tree-search refinement.

Two roles from one base: the actor answers, the refiner judges and refines. Round t: the actor
samples K responses per prompt; the refiner judges each (a step-by-step check of every instruction
ending in a yes/no verdict, several votes, majority; an even split is undecided and skipped); each
failed response gets a tree search over refinements (one refinement task per failed response, on
the `refinement` queue); pairs are (refined, original) — the same response before and after the
edit, so the pair differs only where it matters; the actor trains with DPO plus an SFT term on the
chosen side; the refiner trains (SFT) on its own judgments that agreed with its majority and on the
refinement steps along successful search paths.

Departures: the paper also trains the refiner's judgments with DPO; we use SFT only. Both roles
start from the base θ0 in round 1 (the paper first fine-tunes the refiner on seed data; give such
data as a normal SFT run and use its version as the base to do the same).
"""
from __future__ import annotations

from dataclasses import dataclass

from services.methods.base import (
    TrainerFields, PlanInput, Recipe, Stage, check, evaluation_stages, shard_prompts, single,
)


@dataclass
class SPaRConfig(TrainerFields):
    samples_per_prompt: int = 5  # K [5]
    temperature: float = 0.9  # [0.9]
    top_p: float = 1.0
    max_new_tokens: int = 256
    judge_votes: int = 5  # [5]
    judge_temperature: float = 0.7  # [0.7]
    judge_max_new_tokens: int = 256
    search: str = "bfs"  # bfs | dfs
    branching: int = 3  # [3]
    keep: int = 2  # [2]
    max_depth: int = 3  # [3]
    search_budget: int = 15  # refinements per failed response
    refine_temperature: float = 0.7
    max_failed_per_round: int = 256  # cap on tree searches per round (cost control)
    beta: float = 0.1  # [0.1]
    sft_weight: float = 0.1  # [0.1]
    learning_rate: float = 1e-6
    refiner_learning_rate: float = 1e-6
    train_refiner: bool = True

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        check(1 <= self.samples_per_prompt <= 64, "samples_per_prompt", "must be in 1..64")
        check(self.temperature > 0, "temperature", "must be > 0")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(1 <= self.max_new_tokens <= 8192, "max_new_tokens", "must be in 1..8192")
        check(1 <= self.judge_votes <= 16, "judge_votes", "must be in 1..16")
        check(self.judge_temperature > 0 and self.refine_temperature > 0, "judge_temperature",
              "judge_temperature and refine_temperature must be > 0")
        check(self.search in ("bfs", "dfs"), "search", "must be 'bfs' or 'dfs'")
        check(self.branching >= 1 and self.keep >= 1, "branching", "branching and keep must be >= 1")
        check(1 <= self.max_depth <= 10, "max_depth", "must be in 1..10")
        check(self.search_budget >= 1, "search_budget", "must be >= 1")
        check(self.max_failed_per_round >= 1, "max_failed_per_round", "must be >= 1")
        check(self.beta > 0, "beta", "must be > 0")
        check(self.sft_weight >= 0, "sft_weight", "must be >= 0")
        check(self.learning_rate > 0 and self.refiner_learning_rate > 0, "learning_rate", "must be > 0")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sigmoid", beta=self.beta, sft_weight=self.sft_weight,
                              learning_rate=self.learning_rate)

    def refiner_config(self):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.refiner_learning_rate)

    def search_config(self):
        from services.refinement.search import SearchConfig

        return SearchConfig(strategy=self.search, branching=self.branching, keep=self.keep,
                            max_depth=self.max_depth, budget=self.search_budget)


def refined_pairs(trees: list[dict]) -> list[dict]:
    """(refined, original) pairs: one per search tree that found a correct refinement.

    trees: [{"prompt_id", "sample_index", "root": text, "solution": text | None}].
    """
    return [{"prompt_id": t["prompt_id"], "index": t["sample_index"], "source": "refined_vs_original",
             "chosen": t["solution"], "rejected": t["root"]}
            for t in trees if t.get("solution") and t["solution"].strip() != t["root"].strip()]


def _refine_plan(inp: PlanInput) -> list[dict]:
    from shared.crud import failed_samples

    ids = failed_samples(inp.session, round_id=inp.round_id)[: inp.config.max_failed_per_round]
    return [{"sample_id": i} for i in ids]


def _refiner_train_plan(inp: PlanInput) -> list[dict]:
    return [{"role": "refiner"}] if inp.config.train_refiner else []


def _stages(cfg: SPaRConfig, has_eval: bool) -> list[Stage]:
    return [
        Stage("generate", "generation.generate_shard", shard_prompts(role="policy")),
        Stage("judge", "judging.refiner_shard", shard_prompts(role="policy")),
        Stage("refine", "refinement.search_sample", _refine_plan),
        Stage("pairs", "judging.build_pairs", single),
        Stage("train", "training.train_round", single),
        Stage("train_refiner", "training.train_round", _refiner_train_plan),
    ] + evaluation_stages(has_eval)


RECIPE = Recipe(method="spar", config_cls=SPaRConfig, stages=_stages)
