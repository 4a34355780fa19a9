"""Types of every plain config value and upper bounds of every numeric one a user could mistype.

A method config (and the `train` overrides it passes to TrainConfig) is built from user JSON, in
the API and in embedded mode alike. The configs' own checks say what is *meaningful* (β > 0,
top_p in (0, 1]); this module adds what is *plausible*: an int field takes an int (not 2.0, not
true), a float field a finite number, and nothing is beyond a bound no real run needs (10^20
epochs, a learning rate of 1e308). Bounds are generous on purpose: a refusal here is a typo. A bool
field takes true or false (not "yes", not 1) and a str field a string, so a mistyped switch is a 422
naming it rather than a truthy value that silently turns the switch on.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

INT32 = 2**31 - 1

# name -> (low, high), inclusive. Names not listed use the pattern rules below.
BOUNDS: dict[str, tuple[float, float]] = {
    "epochs": (1, 100),
    "batch_size": (1, 4096),
    "grad_accum": (1, 1024),
    "lora_r": (1, 1024),
    "lora_alpha": (1, 4096),
    "max_prompt_tokens": (1, 32768),
    "max_response_tokens": (1, 32768),
    "logprob_chunk": (1, 32768),
    "forward_tokens": (0, 16_777_216),
    "checkpoint_every": (0, 1_000_000),
    "seed": (0, INT32),
    "judge_version_id": (1, INT32),
    "beta": (0, 100),
    "last_round_beta": (0, 100),
    "sft_weight": (0, 100),
    "max_grad_norm": (0, 1e6),
}


def bound(name: str, kind: type) -> tuple[float, float]:
    if name in BOUNDS:
        return BOUNDS[name]
    if name.endswith("learning_rate"):
        return (0, 1.0)
    if name.endswith("temperature"):
        return (0, 10.0)
    if name.endswith("max_new_tokens"):
        return (1, 32768)
    return (0, 1_000_000) if kind is int else (-1e6, 1e6)


def field_kind(annotation: Any) -> type | None:
    """int, float, bool or str for fields of that plain (or Optional) type, else None. Annotations may be strings
    (modules use `from __future__ import annotations`)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace("Optional[", "").replace("]", "").replace(" | None", "").replace("None | ", "").strip()
    return {"int": int, "float": float, "bool": bool, "str": str}.get(text)


def problem(name: str, kind: type, value: Any) -> str | None:
    """Why `value` is not acceptable for the field `name` of type `kind`, or None."""
    if value is None:
        return None
    if kind is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if kind is str:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be {'an integer' if kind is int else 'a number'}, got {value!r}"
    if kind is int and not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    low, high = bound(name, kind)
    if not low <= value <= high:
        return f"must be in [{_fmt(low)}, {_fmt(high)}], got {_fmt(value)}"
    return None


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def check_numbers(obj: Any, values: dict | None = None, cls: type | None = None) -> None:
    """Raise ValueError (with `.field`) for the first plain-typed field of dataclass `obj` (or of
    `cls`, checking `values`) whose value has the wrong type or, numeric, is out of bounds."""
    cls = cls or type(obj)
    for f in dataclasses.fields(cls):
        kind = field_kind(f.type)
        if kind is None:
            continue
        if values is not None and f.name not in values:
            continue
        value = values[f.name] if values is not None else getattr(obj, f.name)
        why = problem(f.name, kind, value)
        if why is not None:
            err = ValueError(f"{f.name}: {why}")
            err.field = f.name  # type: ignore[attr-defined]
            raise err
