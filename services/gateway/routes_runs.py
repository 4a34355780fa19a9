"""Runs (create, show, cancel, export pairs) and model versions."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import Response
from sqlmodel import select

from services.gateway import errors, idempotency, model_sources
from services.gateway.deps import AdminDep, KeyDep, SessionDep, may_change_run, owned
from services.gateway.limits import StrictRoute
from services.gateway.paging import CursorQ, LimitQ, page
from services.gateway import formats
from services.gateway.downloads import FILES_DOC, FormatQ, JSONLResponse, StyleQ, file_answer, jsonl, records_or_422
from services.gateway.schemas import (
    AddPromptSets, BaseModels, ModelPage, RoundDetail, RunDetail, RunPage, RunRequest, RunSummary, TrainSteps,
)
from services.judging.evaluation import eval_series
from services.methods import get_recipe, parse_stored_config, runs
from shared import crud
from shared.config import get_settings
from shared.models import ModelVersion, ModelVersionPublic, PromptSet, Round, Run, utcnow
from shared.queue import try_enqueue

router = APIRouter(tags=["runs"], route_class=StrictRoute, responses=errors.responses(401, 422))
MAX_ROUNDS = runs.MAX_ROUNDS
RunId = Annotated[int, Path(description="a run id (ids outside the database's range answer 404)")]


def _steps_key(key: str) -> bool:
    return key.endswith("_steps")  # per-step trainer metrics: GET .../train-steps


def _public(session, run: Run) -> RunDetail:
    out = RunDetail.model_validate(run, from_attributes=True)
    out.round_details = [RoundDetail(**{**RoundDetail.model_validate(r, from_attributes=True).model_dump(),
                                        "metrics": {k: v for k, v in r.metrics.items() if not _steps_key(k)}})
                         for r in crud.rounds_of_run(session, run_id=run.id)]
    return out


@router.post("/v1/runs", status_code=201, response_model=RunDetail, responses=errors.responses(400, 409, 413))
def create_run(req: RunRequest, session: SessionDep, key: KeyDep,
               idempotency_key: idempotency.IdempotencyKey = None) -> RunDetail:
    return idempotency.once(session, key, scope="runs", idem=idempotency_key, status_code=201,
                            digest=idempotency.request_hash(req.model_dump(mode="json")),
                            create=lambda: _create_run(req, session, key))


def _create_run(req: RunRequest, session, key) -> RunDetail:
    body = req.to_create()
    # The API takes base models only from declared places (embedded mode takes any local directory).
    base_model, model_errors = model_sources.resolve(body.base_model, get_settings())
    if model_errors:
        raise HTTPException(422, model_errors)
    body.base_model = base_model
    try:
        run, rnd = runs.create_run(session, workspace_id=key.workspace_id, body=body)
    except runs.RunInvalid as exc:
        raise HTTPException(422, exc.errors)
    run.created_by_key_id = key.id
    session.commit()
    # Committed: from here the run exists whatever the broker does. If the send fails, the sweep
    # starts the round (it advances every open round), so the caller gets 201, never a 500 that
    # a retry would turn into a second run.
    try_enqueue("conductor.advance", rnd.id)
    return _public(session, run)


@router.get("/v1/runs", response_model=RunPage)
def list_runs(session: SessionDep, key: KeyDep, limit: LimitQ = 50, cursor: CursorQ = None) -> RunPage:
    """Runs, newest first, without their rounds (GET /v1/runs/{id} has them)."""
    rows, nxt = page(session, Run, workspace_id=key.workspace_id, limit=limit, cursor=cursor)
    return RunPage(items=[RunSummary.model_validate(r, from_attributes=True) for r in rows], next_cursor=nxt)


@router.get("/v1/runs/{run_id}", response_model=RunDetail, responses=errors.responses(404))
def get_run(run_id: RunId, session: SessionDep, key: KeyDep) -> RunDetail:
    return _public(session, owned(session, Run, run_id, key, "run"))


@router.get("/v1/runs/{run_id}/rounds/{number}/train-steps", response_model=TrainSteps,
            responses=errors.responses(404))
def train_steps(run_id: RunId, number: Annotated[int, Path(ge=1, le=MAX_ROUNDS * 100)], session: SessionDep,
                key: KeyDep) -> TrainSteps:
    """Per-step trainer metrics of one round (loss, learning rate, ... per logged step)."""
    run = owned(session, Run, run_id, key, "run")
    rnd = session.exec(select(Round).where(Round.run_id == run.id, Round.number == number)).first()
    if rnd is None:
        raise HTTPException(404, f"run {run_id} has no round {number}")
    return TrainSteps(round=number, series={k: v for k, v in rnd.metrics.items() if _steps_key(k)})


@router.post("/v1/runs/{run_id}/cancel", response_model=RunDetail, responses=errors.responses(403, 404, 409))
def cancel_run(run_id: RunId, session: SessionDep, key: KeyDep) -> RunDetail:
    may_change_run(key, owned(session, Run, run_id, key, "run"))
    run = crud.lock_run(session, run_id=run_id)  # run first, then rounds: the conductor's order
    if run.status in ("succeeded", "failed", "cancelled", "stopped"):
        raise HTTPException(409, f"run {run_id} already ended with status {run.status!r}")
    run.status, run.finished_at = "cancelled", utcnow()
    for rnd in session.exec(select(Round).where(Round.run_id == run.id, Round.status == "running")):
        rnd.status, rnd.finished_at = "cancelled", utcnow()
    session.commit()
    return _public(session, run)


@router.post("/v1/runs/{run_id}/prompt-sets", response_model=RunDetail,
             responses=errors.responses(400, 403, 404, 409, 413))
def add_prompt_sets(run_id: RunId, body: AddPromptSets, session: SessionDep, key: KeyDep) -> RunDetail:
    """Add prompt sets to a running run: they join from the next round the conductor plans."""
    run = owned(session, Run, run_id, key, "run")
    may_change_run(key, run)
    ids = body.prompt_set_ids
    if run.status not in ("queued", "running"):
        raise HTTPException(409, f"run {run_id} already ended with status {run.status!r}")
    missing = runs.foreign_ids(session, key.workspace_id, PromptSet, ids, ["prompt_set_ids"])
    if set(ids) & set(run.eval_prompt_set_ids or []):
        missing.append({"loc": ["prompt_set_ids"], "msg": "held-out sets of this run cannot be trained on"})
    if missing:
        raise HTTPException(422, missing)
    config, invalid = parse_stored_config(get_recipe(run.method).config_cls, run.config)
    if invalid:  # the run's own stored config, not this request: its next advance fails the run
        raise HTTPException(409, f"run {run_id} has a stored config that no longer validates: {invalid}")
    problems = runs.data_errors(session, key.workspace_id, run.method, ids, config)
    if problems:
        raise HTTPException(422, problems)
    locked = crud.lock_run(session, run_id=run.id)
    if locked.status not in ("queued", "running"):
        raise HTTPException(409, f"run {run_id} already ended with status {locked.status!r}")
    locked.prompt_set_ids = list(dict.fromkeys(list(locked.prompt_set_ids) + ids))
    session.commit()
    return _public(session, locked)


@router.get("/v1/runs/{run_id}/pairs", response_class=JSONLResponse, responses={**FILES_DOC, **errors.responses(404, 409)})
def export_pairs(run_id: RunId, session: SessionDep, key: KeyDep,
                 round: Annotated[Optional[int], Query(ge=1, le=MAX_ROUNDS * 100)] = None,
                 format: FormatQ = "jsonl", style: StyleQ = "conversational"):
    """Preference pairs in TRL's prompt/chosen/rejected format (plus round, source, margin): JSONL,
    Parquet, or a `datasets` directory (.tar.gz) for `DPOTrainer(train_dataset=load_from_disk(...))`."""
    run = owned(session, Run, run_id, key, "run")
    records = records_or_422(formats.pair_records, crud.pairs_of_run(session, run_id=run.id, round_number=round), style)
    if format == "jsonl":
        return jsonl(records)
    name = f"run-{run.id}-pairs" + (f"-round-{round}" if round is not None else "")
    return file_answer(records, fmt=format, kind="pairs", style=style, name=name)


class PNGResponse(Response):
    media_type = "image/png"


@router.get("/v1/runs/{run_id}/plot.png", response_class=PNGResponse,
            responses={200: {"description": "a PNG image", "content": {"image/png": {"schema": {"type": "string",
                                                                                                  "format": "binary"}}}},
                       **errors.responses(404, 409)})
def plot_run(run_id: RunId, session: SessionDep, key: KeyDep) -> PNGResponse:
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
    return PNGResponse(buf.getvalue())


@router.get("/v1/models", response_model=ModelPage)
def list_models(session: SessionDep, key: KeyDep, limit: LimitQ = 50, cursor: CursorQ = None) -> ModelPage:
    rows, nxt = page(session, ModelVersion, workspace_id=key.workspace_id, limit=limit, cursor=cursor)
    return ModelPage(items=[ModelVersionPublic.model_validate(r, from_attributes=True) for r in rows], next_cursor=nxt)


@router.get("/v1/base-models", response_model=BaseModels)
def base_models(key: KeyDep) -> BaseModels:
    """Accepted values of a run's base_model on this deployment."""
    return BaseModels(names=model_sources.available(get_settings()))


@router.get("/v1/models/{version_id}", response_model=ModelVersionPublic, responses=errors.responses(404))
def get_model(version_id: int, session: SessionDep, key: KeyDep) -> ModelVersion:
    return owned(session, ModelVersion, version_id, key, "model version")


@router.post("/v1/models/{version_id}/promote", response_model=ModelVersionPublic,
             responses=errors.responses(403, 404))
def promote_model(version_id: int, session: SessionDep, key: AdminDep) -> ModelVersion:
    """Mark a version as the one to serve; other versions of its run lose the mark."""
    version = owned(session, ModelVersion, version_id, key, "model version")
    crud.promote(session, version=version)
    session.commit()
    return version
