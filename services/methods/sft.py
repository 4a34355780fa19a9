"""SFT: cross-entropy on the gold responses of the run's prompts (a bootstrap before the
self-improvement methods, or a baseline next to them). Each round trains a fresh adapter from the
base on the same data; with held-out prompts it is evaluated like every other method."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.methods.base import Recipe, Stage, check, evaluation_stages, single


@dataclass
class SFTConfig:
    learning_rate: float = 1e-4
    epochs: int = 2
    batch_size: int = 8
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    max_prompt_tokens: int = 512
    max_response_tokens: int = 512
    max_new_tokens: int = 256  # for the evaluation's answers
    temperature: float = 1.0  # unused by SFT itself; evaluation decodes greedily
    top_p: float = 1.0
    seed: int = 0
    train: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        check(self.epochs >= 1, "epochs", "must be >= 1")
        check(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size", "batch_size and grad_accum must be >= 1")
        check(1 <= self.max_new_tokens <= 8192, "max_new_tokens", "must be in 1..8192")
        check(isinstance(self.train, dict), "train", "must be an object of TrainConfig fields")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.learning_rate)


def _stages(cfg: SFTConfig, has_eval: bool) -> list[Stage]:
    return [Stage("train", "training.train_round", single)] + evaluation_stages(has_eval)


RECIPE = Recipe(method="sft", config_cls=SFTConfig, stages=_stages)
