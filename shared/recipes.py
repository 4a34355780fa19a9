"""Method name → recipe: the one place where the generic machinery finds a run's method.

`services/methods` registers every recipe here when it is imported (the workers and the inline
executor import it through `shared.queue.TASK_MODULES`), and a test or a plug-in can register
one more. The generic stage tasks (`judging.build_pairs`, `training.train_round`) look the run's
recipe up here and call its hooks, so no generic service imports a method, and `shared` imports
no service: it only relies on a recipe having these attributes (see services/methods/base.py):

- `method` (its name), `load_config(data) -> config` (raises ValueError on bad stored JSON),
  `stages(config, has_eval) -> [Stage]`;
- `pairs(data, config) -> (pairs, counts)`: a round's preference pairs (None: the method has none);
- `training_job(data, config, role) -> TrainJob | None`: what one training task trains.

`data` is a `shared.round_data.RoundData`, a read-only view of the round.
"""
from __future__ import annotations

from typing import Any

_RECIPES: dict[str, Any] = {}


def register(recipe: Any) -> Any:
    """Make `recipe` the recipe of `recipe.method` (a later registration replaces an earlier one)."""
    _RECIPES[recipe.method] = recipe
    return recipe


def recipe_for(method: str) -> Any:
    if method not in _RECIPES:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(_RECIPES)}")
    return _RECIPES[method]


def methods() -> list[str]:
    return sorted(_RECIPES)
