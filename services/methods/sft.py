"""SFT: cross-entropy on the gold responses of the run's prompts (a bootstrap before the
self-improvement methods, or a baseline next to them). Each round trains a fresh adapter from the
base on the same data; with held-out prompts it is evaluated like every other method."""
from __future__ import annotations

from dataclasses import dataclass

from services.methods.base import TrainerFields, Recipe, Stage, check, evaluation_stages, single


@dataclass
class SFTConfig(TrainerFields):
    learning_rate: float = 1e-4
    epochs: int = 2
    max_new_tokens: int = 256  # for the evaluation's answers
    temperature: float = 1.0  # unused by SFT itself; evaluation decodes greedily
    top_p: float = 1.0

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        check(1 <= self.max_new_tokens <= 8192, "max_new_tokens", "must be in 1..8192")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.learning_rate)


def _stages(cfg: SFTConfig, has_eval: bool) -> list[Stage]:
    return [Stage("train", "training.train_round", single)] + evaluation_stages(has_eval)


RECIPE = Recipe(method="sft", config_cls=SFTConfig, stages=_stages)
