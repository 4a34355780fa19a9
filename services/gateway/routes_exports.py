"""Model versions as merged transformers directories: request an export, see its state, download it.

The merge loads the base model, so it runs as a task on the training queue
(`training.export_model`, services/training/tasks.py), never in the gateway. The result lives in
the artifact store (shared/artifacts.export_dir): the directory, for hosts that share the volume,
and a .tar.gz that the gateway sends as a file (Content-Length, ranges), so a remote client
downloads it without the gateway holding it in memory. The files are the state; no table.
"""
from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import FileResponse, JSONResponse

from services.gateway import errors
from services.gateway.deps import KeyDep, SessionDep, owned
from services.gateway.downloads import GZIP
from services.gateway.limits import StrictRoute
from services.gateway.schemas import ExportDtype, ModelExport, ModelExportRequest
from shared import artifacts
from shared.models import ModelVersion, utcnow
from shared.queue import try_enqueue

router = APIRouter(tags=["models"], route_class=StrictRoute, responses=errors.responses(401, 422))
VersionId = Annotated[int, Path(description="a model version id")]
DtypeQ = Annotated[ExportDtype, Query(description="the dtype the export was requested in")]


def _state(version: ModelVersion, dtype: str) -> ModelExport:
    st = artifacts.export_state(version.workspace_id, version.id, dtype)
    status = "pending" if st["status"] == "stale" else st["status"]
    return ModelExport(version_id=version.id, dtype=dtype, status=status, path=st["path"],
                       archive_bytes=st["archive_bytes"], error=st["error"],
                       download=f"/v1/models/{version.id}/export/archive?dtype={dtype}" if status == "ready" else None)


def _exportable(session, version_id: int, key) -> ModelVersion:
    version = owned(session, ModelVersion, version_id, key, "model version")
    if version.kind == "base":
        raise HTTPException(409, f"version {version_id} is the base model {version.base_model!r} itself: "
                                 "there is nothing to merge; export a version a round trained")
    return version


@router.post("/v1/models/{version_id}/export", response_model=ModelExport,
             responses={202: {"model": ModelExport, "description": "export queued (or still running)"},
                        **errors.responses(404, 409, 413)})
def export_model(version_id: VersionId, body: ModelExportRequest, session: SessionDep, key: KeyDep):
    """Merge the version's LoRA adapter into its base and write it, with the tokenizer and a model
    card, under the artifact store. 200 with the result when it is ready; else 202 and the export
    is queued on the training queue (again when it failed or its request went stale). Poll GET."""
    version = _exportable(session, version_id, key)
    st = artifacts.export_state(version.workspace_id, version.id, body.dtype)
    if st["status"] == "ready":
        return _state(version, body.dtype)
    if st["status"] != "pending":  # absent, failed, or a request that never ran
        d = artifacts.export_dir(version.workspace_id, version.id, body.dtype)
        d.mkdir(parents=True, exist_ok=True)
        (d / "error.txt").unlink(missing_ok=True)
        (d / "requested").write_text(utcnow().isoformat())
        if not try_enqueue("training.export_model", version.id, body.dtype):
            os.unlink(d / "requested")  # not sent: let the next POST send it
            raise HTTPException(503, "the queue is unreachable; try again shortly", headers={"Retry-After": "5"})
    return JSONResponse(_state(version, body.dtype).model_dump(), status_code=202)


@router.get("/v1/models/{version_id}/export", response_model=ModelExport, responses=errors.responses(404, 409))
def export_status(version_id: VersionId, session: SessionDep, key: KeyDep, dtype: DtypeQ = "auto") -> ModelExport:
    """The state of the version's export in `dtype` (absent until POSTed)."""
    return _state(_exportable(session, version_id, key), dtype)


@router.get("/v1/models/{version_id}/export/archive", response_class=FileResponse,
            responses={200: {"description": "the merged model directory as .tar.gz",
                             "content": {GZIP: {"schema": {"type": "string", "format": "binary"}}}},
                       **errors.responses(404, 409)})
def export_archive(version_id: VersionId, session: SessionDep, key: KeyDep, dtype: DtypeQ = "auto") -> FileResponse:
    """The export as a .tar.gz (one top directory, autodidact-v<id>/): 409 until it is ready."""
    version = _exportable(session, version_id, key)
    st = artifacts.export_state(version.workspace_id, version.id, dtype)
    if st["status"] != "ready":
        raise HTTPException(409, f"the export of version {version_id} in {dtype} is {_state(version, dtype).status}; "
                                 "POST /v1/models/{id}/export and wait until GET says ready")
    return FileResponse(st["archive"], media_type=GZIP, filename=os.path.basename(st["archive"]))
