"""What a method recipe is: a validated config dataclass plus the ordered stages of one round.

A stage names the task that does its work and how the work is split into StageTasks (shards).
The conductor only ever sees this shape, so adding a method never touches the conductor.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class PlanInput:
    """Plain data a stage's planner may use to split its work."""

    prompt_ids: list[int]  # the run's training prompts, in a stable order
    eval_prompt_ids: list[int]  # held-out prompts (may be empty)
    round_number: int
    total_rounds: int
    shard_size: int
    config: Any
    round_id: int = 0
    # An open DB session, for planners that split work by rows earlier stages wrote (failed
    # samples, self-instructed prompts). Planners only read through it.
    session: Any = None


@dataclass(frozen=True)
class Stage:
    name: str
    task: str  # Celery task name, '<queue>.<verb>'
    plan: Callable[[PlanInput], list[dict]]  # one payload per StageTask; [] skips the stage


@dataclass(frozen=True)
class Recipe:
    method: str
    config_cls: type
    stages: Callable[[Any, bool], list[Stage]]  # (config, has_eval_prompts) -> stages


def shards(ids: list[int], size: int, **extra: Any) -> list[dict]:
    size = max(1, size)
    return [{"prompt_ids": ids[i:i + size], **extra} for i in range(0, len(ids), size)]


def shard_prompts(key: str = "prompt_ids", **extra: Any) -> Callable[[PlanInput], list[dict]]:
    """Planner: split the run's (or held-out) prompts into shards of `shard_size`."""

    def plan(inp: PlanInput) -> list[dict]:
        ids = inp.prompt_ids if key == "prompt_ids" else inp.eval_prompt_ids
        return shards(ids, inp.shard_size, **extra)

    return plan


def single(inp: PlanInput) -> list[dict]:
    """Planner: the whole stage is one task."""
    return [{}]


def parse_config(config_cls: type, data: dict | None) -> tuple[Any, list[dict]]:
    """Build a method config from user JSON. Returns (config, []) or (None, errors) where each
    error is {"loc": [...], "msg": ...} naming the offending field."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        return None, [{"loc": ["config", k], "msg": f"unknown key {k!r}; allowed: {sorted(names)}"}
                      for k in unknown]
    try:
        return config_cls(**data), []
    except (TypeError, ValueError) as exc:
        field = getattr(exc, "field", None) or _field_in_message(str(exc), names)
        return None, [{"loc": ["config"] + ([field] if field else []), "msg": str(exc)}]


def config_json(config: Any) -> dict:
    """A validated config as the JSON stored on the run (every field, defaults included)."""
    import json

    return json.loads(json.dumps(dataclasses.asdict(config)))


def _field_in_message(msg: str, names: set[str]) -> str | None:
    hits = [n for n in names if n in msg]
    return max(hits, key=len) if hits else None


def get_recipe(method: str) -> Recipe:
    from services.methods.registry import RECIPES

    if method not in RECIPES:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[method]


def check(cond: bool, field: str, msg: str) -> None:
    """Config validation helper: raise a ValueError that names the field."""
    if not cond:
        err = ValueError(f"{field}: {msg}")
        err.field = field  # type: ignore[attr-defined]
        raise err


def eval_shards(inp: PlanInput) -> list[dict]:
    """Planner of the evaluation's generation: greedy answers to the held-out prompts from the
    version the round produced, and in round 1 also from the base (the 'before' point)."""
    roles = [("eval", "produced")] + ([("eval_base", "base")] if inp.round_number == 1 else [])
    return [shard for role, model in roles
            for shard in shards(inp.eval_prompt_ids, inp.shard_size, role=role, model=model, greedy=True, n=1)]


def evaluation_stages(has_eval: bool) -> list[Stage]:
    """The stages every recipe ends with when the run has held-out prompts."""
    if not has_eval:
        return []
    return [Stage("eval_generate", "generation.generate_shard", eval_shards),
            Stage("evaluate", "judging.evaluate", single)]


@dataclass
class TrainerFields:
    """Trainer settings every method config carries; `train` passes any other TrainConfig field
    through (e.g. {"schedule": "cosine"}). Method configs subclass this and may change defaults."""

    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    max_prompt_tokens: int = 512
    max_response_tokens: int = 512
    seed: int = 0
    train: dict = dataclasses.field(default_factory=dict)
    # Evaluation: rubric-judge each held-out answer this many times with the evaluated model
    # itself (0 = off: the mean judge score then stays empty and evaluation costs no LLM calls).
    eval_judge_samples: int = 0

    def check_trainer_fields(self) -> None:
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        check(self.lora_r >= 1, "lora_r", "must be >= 1")
        check(isinstance(self.train, dict), "train", "must be an object of TrainConfig fields")
        check(0 <= self.eval_judge_samples <= 16, "eval_judge_samples", "must be in 0..16")


TRAINER_FIELDS = tuple(f.name for f in dataclasses.fields(TrainerFields) if f.name not in ("train", "eval_judge_samples"))


def trainer_config(cfg: Any, **settings: Any):
    """A TrainConfig from a method config: its shared trainer fields, the method's `settings`, and
    the user's `train` overrides last. Errors name the method config's `train` field."""
    from services.training.config import TrainConfig

    base = {f: getattr(cfg, f) for f in TRAINER_FIELDS}
    if hasattr(cfg, "warmup_ratio"):
        base["warmup_ratio"] = cfg.warmup_ratio
    overrides = getattr(cfg, "train", {}) or {}
    unknown = set(overrides) - set(TrainConfig.__dataclass_fields__)
    check(not unknown, "train", f"unknown trainer fields {sorted(unknown)}")
    check(overrides.get("lora", True) is not False, "train",
          "lora: false (full fine-tuning) is supported by the trainer but runs publish and chain LoRA "
          "adapters; leave lora on for runs")
    try:
        return TrainConfig(**{**base, **settings, **overrides})
    except (TypeError, ValueError) as exc:
        check(False, "train", str(exc))
