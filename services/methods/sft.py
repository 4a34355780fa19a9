"""SFT: cross-entropy on the gold responses of the run's prompts (a bootstrap before the
self-improvement methods, or a baseline next to them). Each round trains a fresh adapter from the
base on the same data; with held-out prompts it is evaluated like every other method."""
from __future__ import annotations

from dataclasses import dataclass

from services.methods.base import (
    DataCheck, Recipe, SamplingFields, Stage, TrainerFields, check, evaluation_stages, register, single,
)
from services.methods.jobs import gold_sft_job


@dataclass
class SFTConfig(SamplingFields, TrainerFields):
    learning_rate: float = 1e-4
    epochs: int = 2
    max_new_tokens: int = 256  # for the evaluation's answers
    temperature: float = 1.0  # unused by SFT itself; evaluation decodes greedily
    top_p: float = 1.0

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        self.check_sampling_fields()
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.learning_rate)


def check_data(check: DataCheck) -> list[dict]:
    if not any(p["reference"] for p in check.prompts):
        return [{"loc": ["prompt_set_ids"], "msg": "SFT needs prompts with a gold `reference`"}]
    return []


def training_job(data, cfg: SFTConfig, role: str):
    return gold_sft_job(data, cfg) if role == "policy" else None


def _stages(cfg: SFTConfig, has_eval: bool) -> list[Stage]:
    return [Stage("train", "training.train_round", single)] + evaluation_stages(has_eval)


RECIPE = register(Recipe(method="sft", config_cls=SFTConfig, stages=_stages, check_data=check_data,
                         training_job=training_job))
