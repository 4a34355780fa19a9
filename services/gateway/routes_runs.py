"""Runs (create, show, cancel, export pairs) and model versions."""
from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response, StreamingResponse
from sqlmodel import select

from services.gateway.deps import KeyDep, SessionDep, owned
from services.methods import get_recipe, parse_config, runs
from shared import crud
from shared.models import (
    ModelVersion, ModelVersionPublic, PreferencePair, Prompt, PromptSet, Round, RoundPublic, Run,
    RunCreate, RunPublic, utcnow,
)
from shared.queue import enqueue

router = APIRouter(tags=["runs"])


def _public(session, run: Run) -> RunPublic:
    out = RunPublic.model_validate(run, from_attributes=True)
    out.round_details = [RoundPublic.model_validate(r, from_attributes=True)
                         for r in crud.rounds_of_run(session, run_id=run.id)]
    return out


@router.post("/v1/runs", status_code=201, response_model=RunPublic)
def create_run(body: RunCreate, session: SessionDep, key: KeyDep) -> RunPublic:
    try:
        run, rnd = runs.create_run(session, workspace_id=key.workspace_id, body=body)
    except runs.RunInvalid as exc:
        raise HTTPException(422, exc.errors)
    session.commit()
    enqueue("conductor.advance", rnd.id)
    return _public(session, run)


@router.get("/v1/runs", response_model=list[RunPublic])
def list_runs(session: SessionDep, key: KeyDep) -> list[RunPublic]:
    return [_public(session, r) for r in crud.workspace_rows(session, Run, workspace_id=key.workspace_id)]


@router.get("/v1/runs/{run_id}", response_model=RunPublic)
def get_run(run_id: int, session: SessionDep, key: KeyDep) -> RunPublic:
    return _public(session, owned(session, Run, run_id, key, "run"))


@router.post("/v1/runs/{run_id}/cancel", response_model=RunPublic)
def cancel_run(run_id: int, session: SessionDep, key: KeyDep) -> RunPublic:
    owned(session, Run, run_id, key, "run")
    run = crud.lock_run(session, run_id=run_id)  # run first, then rounds: the conductor's order
    if run.status in ("succeeded", "failed", "cancelled", "stopped"):
        raise HTTPException(409, f"run {run_id} already ended with status {run.status!r}")
    run.status, run.finished_at = "cancelled", utcnow()
    for rnd in session.exec(select(Round).where(Round.run_id == run.id, Round.status == "running")):
        rnd.status, rnd.finished_at = "cancelled", utcnow()
    session.commit()
    return _public(session, run)


@router.post("/v1/runs/{run_id}/prompt-sets", response_model=RunPublic)
def add_prompt_sets(run_id: int, body: dict, session: SessionDep, key: KeyDep) -> RunPublic:
    """Add prompt sets to a running run: they join from the next round the conductor plans."""
    run = owned(session, Run, run_id, key, "run")
    ids = body.get("prompt_set_ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(type(i) is int for i in ids):
        raise HTTPException(422, [{"loc": ["prompt_set_ids"], "msg": "give a non-empty list of prompt set ids"}])
    if run.status not in ("queued", "running"):
        raise HTTPException(409, f"run {run_id} already ended with status {run.status!r}")
    missing = runs.foreign_ids(session, key.workspace_id, PromptSet, ids, ["prompt_set_ids"])
    if set(ids) & set(run.eval_prompt_set_ids or []):
        missing.append({"loc": ["prompt_set_ids"], "msg": "held-out sets of this run cannot be trained on"})
    if missing:
        raise HTTPException(422, missing)
    config, _ = parse_config(get_recipe(run.method).config_cls, run.config)
    errors = runs.data_errors(session, key.workspace_id, run.method, ids, config)
    if errors:
        raise HTTPException(422, errors)
    locked = crud.lock_run(session, run_id=run.id)
    if locked.status not in ("queued", "running"):
        raise HTTPException(409, f"run {run_id} already ended with status {locked.status!r}")
    locked.prompt_set_ids = list(dict.fromkeys(list(locked.prompt_set_ids) + ids))
    session.commit()
    return _public(session, locked)


@router.get("/v1/runs/{run_id}/pairs")
def export_pairs(run_id: int, session: SessionDep, key: KeyDep, round: int | None = None) -> StreamingResponse:
    """Preference pairs as JSONL in TRL's conversational prompt/chosen/rejected format."""
    run = owned(session, Run, run_id, key, "run")
    q = (select(PreferencePair, Prompt, Round).join(Prompt, Prompt.id == PreferencePair.prompt_id)
         .join(Round, Round.id == PreferencePair.round_id).where(Round.run_id == run.id))
    if round is not None:
        q = q.where(Round.number == round)
    rows = session.exec(q.order_by(Round.number, PreferencePair.prompt_id, PreferencePair.index)).all()

    def lines():
        for pair, prompt, _ in rows:
            yield json.dumps({"prompt": prompt.messages,
                              "chosen": [{"role": "assistant", "content": pair.chosen}],
                              "rejected": [{"role": "assistant", "content": pair.rejected}]}) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def eval_series(rounds: list[Round]) -> list[dict]:
    """Held-out metrics per round for plotting: round 0 is the base (measured in round 1)."""
    series = []
    if rounds and "eval_base" in rounds[0].metrics:
        series.append({"round": 0, **rounds[0].metrics["eval_base"]})
    series += [{"round": r.number, **r.metrics["eval"]} for r in rounds if "eval" in r.metrics]
    return series


@router.get("/v1/runs/{run_id}/plot.png")
def plot_run(run_id: int, session: SessionDep, key: KeyDep) -> Response:
    """Held-out accuracy and response length per round, as a PNG."""
    import io

    from services.judging.evaluation import plot_run as draw

    run = owned(session, Run, run_id, key, "run")
    series = eval_series(crud.rounds_of_run(session, run_id=run.id))
    if not series:
        raise HTTPException(409, f"run {run_id} has no evaluation yet: create runs with "
                                 "eval_prompt_set_ids and wait for a round to finish")
    buf = io.BytesIO()
    draw(series, buf)
    return Response(buf.getvalue(), media_type="image/png")


@router.get("/v1/models", response_model=list[ModelVersionPublic])
def list_models(session: SessionDep, key: KeyDep) -> list[ModelVersion]:
    return crud.workspace_rows(session, ModelVersion, workspace_id=key.workspace_id)


@router.get("/v1/models/{version_id}", response_model=ModelVersionPublic)
def get_model(version_id: int, session: SessionDep, key: KeyDep) -> ModelVersion:
    return owned(session, ModelVersion, version_id, key, "model version")


@router.post("/v1/models/{version_id}/promote", response_model=ModelVersionPublic)
def promote_model(version_id: int, session: SessionDep, key: KeyDep) -> ModelVersion:
    """Mark a version as the one to serve; other versions of its run lose the mark."""
    version = owned(session, ModelVersion, version_id, key, "model version")
    crud.promote(session, version=version)
    session.commit()
    return version
