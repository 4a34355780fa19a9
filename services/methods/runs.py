"""Creating a run: the one function the API and the embedded mode both call, with one validation.

`create_run` checks everything a run needs before any work is queued — the method and its config,
the rounds, the base model, the prompt sets (they exist in the workspace, held-out sets are not
trained on and carry constraints), the stopping rule, and the recipe's own data check — and
raises `RunInvalid` with every problem as {"loc", "msg"} (the API answers 422 with that list; the
embedded mode prints it and exits non-zero). On success it stores the run and opens round 1 in the
caller's transaction; the caller enqueues `conductor.advance(round_id)` after commit.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from services.methods.base import DataCheck, config_json, get_recipe, parse_config
from shared import crud
from shared.config import get_settings
from shared.models import ModelVersion, Prompt, PromptSet, Round, Run, RunCreate
from shared.round_data import prompt_dict

MAX_ROUNDS = 100
STOPPING = {"max_rounds": (int, 1), "patience": (int, 0), "delta": (float, 0.0)}


class RunInvalid(ValueError):
    """A run that cannot start; `errors` is the list of {"loc", "msg"} problems."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))


def create_run(session: Session, *, workspace_id: int, body: RunCreate) -> tuple[Run, Round]:
    """Validate `body`, store the run and open its round 1 (see module docstring)."""
    try:
        recipe = get_recipe(body.method)
    except ValueError as exc:
        raise RunInvalid([{"loc": ["method"], "msg": str(exc)}]) from None
    config, errors = parse_config(recipe.config_cls, body.config)
    if not 1 <= body.rounds <= MAX_ROUNDS:
        errors.append({"loc": ["rounds"], "msg": f"must be in 1..{MAX_ROUNDS}"})
    errors += base_model_errors(body.base_model)
    if not body.prompt_set_ids:
        errors.append({"loc": ["prompt_set_ids"], "msg": "give at least one prompt set id"})
    errors += foreign_ids(session, workspace_id, PromptSet, body.prompt_set_ids, ["prompt_set_ids"])
    errors += foreign_ids(session, workspace_id, PromptSet, body.eval_prompt_set_ids, ["eval_prompt_set_ids"])
    overlap = sorted(set(body.prompt_set_ids) & set(body.eval_prompt_set_ids))
    if overlap:
        errors.append({"loc": ["eval_prompt_set_ids"], "msg": f"set(s) {overlap} are also training sets; "
                       "held-out prompts must not be trained on"})
    taught_by = [f.name for f in dataclasses.fields(config) if f.name.endswith("_prompt_set_ids")] if config else []
    for field in taught_by:
        taught = sorted(set(getattr(config, field) or []) & set(body.eval_prompt_set_ids))
        if taught:  # EFT and judge sets train the judge: held-out prompts must not
            errors.append({"loc": ["config", field], "msg": f"set(s) {taught} are held-out sets of this run; "
                           "held-out prompts must not be trained on, by the policy or the judge"})
    for i, sid in enumerate(body.eval_prompt_set_ids):
        if not errors and not any(p.constraints for p in session.exec(select(Prompt).where(Prompt.prompt_set_id == sid))):
            errors.append({"loc": ["eval_prompt_set_ids", i], "msg": f"prompt set {sid} has no prompts with "
                           "constraints to evaluate"})
    if not errors:
        errors += data_errors(session, workspace_id, body.method, body.prompt_set_ids, config)
    errors += stopping_errors(body.stopping)
    if errors:
        raise RunInvalid(errors)
    run = Run(workspace_id=workspace_id, method=body.method, base_model=body.base_model,
              prompt_set_ids=body.prompt_set_ids, eval_prompt_set_ids=body.eval_prompt_set_ids,
              config=config_json(config), rounds=body.rounds, continuous=body.continuous, stopping=body.stopping)
    session.add(run)
    session.flush()
    return run, start_run(session, run)


def start_run(session: Session, run: Run) -> Round:
    """Open round 1 of a freshly stored run, from the base model's version."""
    base = crud.base_version(session, workspace_id=run.workspace_id, base_model=run.base_model)
    run.base_version_id = base.id
    rnd = Round(run_id=run.id, number=1, policy_version_id=base.id)
    session.add(rnd)
    session.flush()
    return rnd


def data_errors(session: Session, workspace_id: int, method: str, set_ids: list[int], config: Any) -> list[dict]:
    """The recipe's check of the prompts in `set_ids` (also used when sets join a running run)."""
    prompts = [prompt_dict(p) for p in session.exec(select(Prompt).where(Prompt.prompt_set_id.in_(set_ids)))]
    models = {"prompt_set": PromptSet, "model_version": ModelVersion}

    def missing(kind: str, ids: list, loc: list) -> list[dict]:
        return foreign_ids(session, workspace_id, models[kind], ids, loc)

    def read_sets(ids: list[int]) -> list[dict]:
        own = [i for i in ids if not foreign_ids(session, workspace_id, PromptSet, [i], [])]
        return [prompt_dict(p) for p in session.exec(select(Prompt).where(Prompt.prompt_set_id.in_(own)))] if own else []

    return get_recipe(method).check_data(DataCheck(prompts=prompts, config=config, missing=missing,
                                                   read_sets=read_sets))


def base_model_errors(name: str) -> list[dict]:
    path = Path(name).expanduser().resolve()
    if path.is_relative_to(Path(get_settings().artifact_dir).resolve()):
        return [{"loc": ["base_model"], "msg": "the artifact store is not a model source; start from a "
                 "model directory (e.g. one exported with shared.modeling.merge_adapter)"}]
    hub = [h.strip() for h in get_settings().allowed_hub_models.split(",") if h.strip()]
    if name in ("gemma", "gemma-chat") or name in hub or (path / "config.json").exists():
        return []
    return [{"loc": ["base_model"], "msg": f"{name!r} is neither 'gemma', 'gemma-chat' nor a model directory "
             "(with config.json) visible to the gateway and workers"}]


def stopping_errors(stopping: dict) -> list[dict]:
    """`stopping` keys and values: max_rounds int ≥ 1, patience int ≥ 0, delta number ≥ 0."""
    errors = []
    for k, v in stopping.items():
        if k not in STOPPING:
            errors.append({"loc": ["stopping", k], "msg": f"allowed keys: {sorted(STOPPING)}"})
            continue
        kind, low = STOPPING[k]
        ok_type = isinstance(v, (int, float)) if kind is float else isinstance(v, int)
        if isinstance(v, bool) or not ok_type or v < low:
            errors.append({"loc": ["stopping", k], "msg": f"must be a {kind.__name__} >= {low}, got {v!r}"})
    return errors


def foreign_ids(session: Session, workspace_id: int, model: type, ids: list, loc: list) -> list[dict]:
    """Errors for ids of `model` that do not exist in the workspace (never says which ones exist
    elsewhere)."""
    what = "prompt set" if model is PromptSet else "model version"
    return [{"loc": loc + [i], "msg": f"{what} {oid} not found"} for i, oid in enumerate(ids)
            if not 0 < oid < 2**31 or (row := session.get(model, oid)) is None or row.workspace_id != workspace_id]
