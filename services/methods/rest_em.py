"""ReST-EM (Singh et al., 2023, arXiv 2312.06585): sample, keep what the verifier accepts, fine-tune.

Round t: E-step — N samples per prompt from θ(t-1), a binary reward from a programmatic check
(verifiable constraints all satisfied, or the exact answer); keep at most K correct responses per
prompt. M-step — SFT on the kept responses, always starting again from the base θ0.

Departures: LoRA adapters by default (a fresh adapter on θ0 each round, as the paper restarts from
the base); identical correct responses of one prompt are kept once, since duplicates only reweight
the data. The paper's learning rates are for full fine-tuning of PaLM 2; ours suit LoRA on small
models.
"""
from __future__ import annotations

from dataclasses import dataclass

from services.methods.base import TrainerFields, Recipe, Stage, check, evaluation_stages, shard_prompts, single


@dataclass
class RestEMConfig(TrainerFields):
    samples_per_prompt: int = 32  # N [32 for math, 64 for code]
    max_correct_per_prompt: int = 10  # K [10]
    temperature: float = 0.7  # [0.7]
    top_k: int = 40  # [40]
    top_p: float = 1.0
    max_new_tokens: int = 256
    learning_rate: float = 1e-4
    epochs: int = 2

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        check(1 <= self.samples_per_prompt <= 256, "samples_per_prompt", "must be in 1..256")
        check(self.max_correct_per_prompt >= 1, "max_correct_per_prompt", "must be >= 1")
        check(self.temperature > 0, "temperature", "must be > 0 (ReST-EM samples)")
        check(self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(1 <= self.max_new_tokens <= 8192, "max_new_tokens", "must be in 1..8192")
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.learning_rate)


def select_correct(samples: list[dict], k: int) -> tuple[list[dict], dict]:
    """The M-step's data: at most k distinct correct responses per prompt, lowest index first.

    samples: [{"prompt_id", "index", "text", "reward"}] with reward 1.0 / 0.0 / None (uncheckable).
    Returns (kept samples, counts) — counts of correct, kept and prompts with any correct sample.
    """
    kept, seen = [], {}
    correct = 0
    for s in sorted(samples, key=lambda s: (s["prompt_id"], s["index"])):
        if s.get("reward") != 1.0:
            continue
        correct += 1
        texts = seen.setdefault(s["prompt_id"], set())
        norm = " ".join(s["text"].split())
        if len(texts) >= k or norm in texts:
            continue
        texts.add(norm)
        kept.append(s)
    return kept, {"correct": correct, "kept": len(kept), "prompts_with_correct": len(seen)}


def _stages(cfg: RestEMConfig, has_eval: bool) -> list[Stage]:
    return [
        Stage("generate", "generation.generate_shard", shard_prompts(role="policy")),
        Stage("verify", "judging.verify_shard", shard_prompts(role="policy")),
        Stage("train", "training.train_round", single),
    ] + evaluation_stages(has_eval)


RECIPE = Recipe(method="rest_em", config_cls=RestEMConfig, stages=_stages)
