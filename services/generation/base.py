"""What every generation backend takes and returns: sampling parameters, completions, the model
reference, and the `Backend` protocol.

Prompts are chat message lists (`[{"role": ..., "content": ...}]`); a backend renders them with the
base model's chat template itself. A backend returns, per prompt and in prompt order, a list of `n`
completions. Nothing here knows about the database or Celery.

Token counts follow TGI's convention: the tokens the model produced for a response, including the
end-of-turn token when it stopped on one.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shared.models import FINISH_AT_LIMIT  # noqa: F401  (re-exported for the backends)


@dataclass
class SamplingParams:
    """How to sample. `temperature=0` means greedy decoding (every one of the n samples is the same).
    `top_k=0` and `top_p=1.0` switch those filters off. `stop` strings end a response early; the
    returned text is cut just before the first stop string. `seed` makes sampling reproducible."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"SamplingParams.n must be an integer >= 1, got {self.n!r}")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if isinstance(self.stop, str):
            raise ValueError(f"SamplingParams.stop must be a list of strings, got the string {self.stop!r}; "  # noqa: TRY004
                             "wrap it in a list")
        self.stop = list(self.stop)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"SamplingParams.stop must hold non-empty strings, got {self.stop!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise ValueError(f"SamplingParams.seed must be None or an integer >= 0, got {self.seed!r}")


@dataclass
class Completion:
    text: str
    token_count: int
    finish_reason: str  # "stop" (end of turn, EOS or a stop string) | FINISH_AT_LIMIT (max_new_tokens)


@dataclass
class ModelRef:
    """Which model to sample from: a base model ("gemma" or a local directory), optionally with a
    LoRA adapter directory written by peft's `save_pretrained`. `version_id` is the ModelVersion id;
    servers use it to name the adapter."""

    base_model: str
    adapter_path: str | None = None
    version_id: int | None = None

    @property
    def adapter_name(self) -> str | None:
        """A stable, server-safe name for the adapter: its version id, else a hash of its path."""
        if self.adapter_path is None:
            return None
        if self.version_id is not None:
            return f"v{self.version_id}"
        return "a" + hashlib.sha1(str(self.adapter_path).encode()).hexdigest()[:12]


class TransientBackendError(ConnectionError):
    """A generation server stayed unavailable (down, overloaded, timing out) through all retries.
    Worth retrying the whole task later; every other failure is a ValueError or a bug."""


@runtime_checkable
class Backend(Protocol):
    def generate(self, prompts: list[list[dict]], model: ModelRef,
                 params: SamplingParams) -> list[list[Completion]]:
        """One list of `params.n` completions per prompt, in prompt order."""
        ...


def shard_seed(base_seed: int, round_number: int, shard: int, batch: int) -> int:
    """Distinct, reproducible sampling seeds per round, shard and batch."""
    return (base_seed * 1_000_003 + round_number * 10_007 + shard * 101 + batch) % (2**31)


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """`text` cut before the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
