"""SPIN (Chen et al., 2024, arXiv 2401.01335): self-play against the previous iterate.

Round t samples y' ~ π_θ(t-1)(·|x) for each prompt with a gold response y, pairs (chosen=y,
rejected=y') and trains θt from θ(t-1) with DPO's sigmoid loss, reference = θ(t-1).

Departures from the paper: LoRA adapters instead of full fine-tuning by default (the adapter of
round t starts from the adapter of round t-1), and the paper's mixing of the previous round's pairs
into round ≥2 is on by default but can be turned off.

Learning rates for LoRA: the paper fine-tunes every weight at 5e-7 (1e-7 in later rounds); an
adapter moves a few million weights and needs a larger step — the usual rule is about 10x — so the
defaults are 5e-6 and 1e-6. Ten times more again is not safe: on Gemma 3 270M, lr 5e-5 for 2 epochs
(the old demo setting) drove the reward margin to 115 and pushed the model's own samples down by
about 8 nats per token in one round; its answers turned to junk (docs/results.md). β stays the
paper's 0.1 (5.0 in the last round), epochs the paper's 2. The training guards (TrainConfig.max_kl,
max_reward_margin) and the round gate (on_regression) stand behind these defaults.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.methods.base import (
    DataCheck, Recipe, SamplingFields, Stage, TrainerFields, balance_lengths, check, evaluation_stages,
    pair_length_counts, register, shard_prompts, single,
)
from services.methods.jobs import pairwise_job
from shared.models import FINISH_AT_LIMIT


@dataclass
class SPINConfig(SamplingFields, TrainerFields):
    beta: float = 0.1  # λ in the paper
    last_round_beta: float | None = 5.0  # the paper raises λ to 5.0 in its last iteration
    learning_rate: float = 5e-6  # paper (full fine-tuning): 5e-7; LoRA: 10x, see the module docstring
    later_learning_rate: float = 1e-6  # paper: 5e-7 in early iterations, 1e-7 later
    later_from_round: int = 3
    epochs: int = 2
    warmup_ratio: float = 0.1
    mix_previous_pairs: bool = True  # paper: round ≥2 trains on the previous round's pairs too
    samples_per_prompt: int = 1
    max_new_tokens: int = 256  # paper: 256
    temperature: float = 1.0  # sample from the model's own distribution
    top_p: float = 1.0
    # The largest share of a round's pairs (among those whose sides differ in word count) in which
    # one side is the longer, the widest gaps dropped first (base.balance_lengths, as in
    # Self-Rewarding and SPaR). The gold answers of a small curriculum are short and the model's
    # samples long, so nearly every pair rejects the longer answer and DPO teaches "stop sooner"
    # beside "answer like the gold" (docs/results.md: answers 42 → 27 words, −8.3 points). 0.5 keeps
    # as many pairs of each side; 1.0 keeps every pair (the paper).
    length_balance: float = 1.0

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        self.check_sampling_fields()
        check(self.beta > 0, "beta", f"must be > 0, got {self.beta}")
        check(self.last_round_beta is None or self.last_round_beta > 0, "last_round_beta",
              "must be > 0 or null to keep beta")
        check(self.learning_rate > 0, "learning_rate", f"must be > 0, got {self.learning_rate}")
        check(self.later_learning_rate > 0, "later_learning_rate", "must be > 0")
        check(self.later_from_round >= 1, "later_from_round", "must be >= 1")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        check(0.5 <= self.length_balance <= 1, "length_balance", "must be in [0.5, 1] (1 keeps every pair)")
        self.train_config(1, 1)  # validates the `train` overrides now, not at round time

    def train_config(self, round_number: int, total_rounds: int):
        """The trainer's settings for round t, with the paper's schedule of β and learning rate."""
        from services.methods.base import round_learning_rate, trainer_config

        # total_rounds is 0 for continuous runs, which have no known last round; a run of one round
        # is its own last round
        last = total_rounds > 0 and round_number == total_rounds
        beta = self.last_round_beta if last and self.last_round_beta else self.beta
        return trainer_config(self, loss="sigmoid", beta=beta, learning_rate=round_learning_rate(self, round_number))


def build_pairs(prompts: list[dict], samples: list[dict]) -> tuple[list[dict], int]:
    """SPIN pairs: the gold response is chosen, each self-generated response is rejected.

    prompts: [{"id", "reference"}]; samples: [{"prompt_id", "index", "text"}].
    Returns (pairs, skipped) — a sample identical to its gold response carries no signal and is
    skipped, as are prompts without a reference.
    """
    gold = {p["id"]: p.get("reference") for p in prompts}
    pairs, skipped = [], 0
    for s in samples:
        ref = gold.get(s["prompt_id"])
        if not ref or s["text"].strip() == ref.strip():
            skipped += 1
            continue
        pairs.append({"prompt_id": s["prompt_id"], "index": s["index"], "source": "gold_vs_generated",
                      "chosen": ref, "rejected": s["text"]})
    return pairs, skipped


def check_data(check: DataCheck) -> list[dict]:
    missing = sorted({p["prompt_set_id"] for p in check.prompts if p["reference"] is None})
    if missing:
        return [{"loc": ["prompt_set_ids"], "msg": f"SPIN needs a gold `reference` for every prompt; "
                 f"set(s) {missing} have prompts without one"}]
    return []


def round_pairs(data, cfg: SPINConfig) -> tuple[list[dict], dict]:
    samples = data.samples("policy")
    prompts = data.prompts(sorted({x["prompt_id"] for x in samples}))
    pairs, skipped = build_pairs([{"id": p["id"], "reference": p["reference"]} for p in prompts.values()], samples)
    pairs, dropped = balance_lengths(pairs, cfg.length_balance)
    # what the pairs teach besides "the gold answer": its length against the sample's, and how many
    # samples never ended (cut at the token limit; scored without an end-of-turn)
    cut = {(x["prompt_id"], x["index"]) for x in samples if x.get("finish_reason") == FINISH_AT_LIMIT}
    return pairs, {"samples": len(samples), "pairs": len(pairs), "pairs_skipped": skipped, **pair_length_counts(pairs),
                   "rejected_cut": sum((p["prompt_id"], p["index"]) in cut for p in pairs), **dropped}


def training_job(data, cfg: SPINConfig, role: str):
    return pairwise_job(data, cfg, mix_previous=cfg.mix_previous_pairs) if role == "policy" else None


def _stages(cfg: SPINConfig, has_eval: bool) -> list[Stage]:
    stages = [
        Stage("generate", "generation.generate_shard", shard_prompts(role="policy")),
        Stage("pairs", "judging.build_pairs", single),
        Stage("train", "training.train_round", single),
    ]
    return stages + evaluation_stages(has_eval)


RECIPE = register(Recipe(method="spin", config_cls=SPINConfig, stages=_stages, check_data=check_data,
                         pairs=round_pairs, training_job=training_job))
