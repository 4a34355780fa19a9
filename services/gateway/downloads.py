"""Answers that are files: JSONL streamed line by line, Parquet, and a `save_to_disk` dataset
directory as .tar.gz. Parquet and dataset files are built in a temporary directory (removed after
the answer is sent) by services/gateway/formats.py."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import HTTPException, Query
from fastapi.responses import FileResponse, StreamingResponse
from starlette.background import BackgroundTask

from services.gateway import formats
from shared.artifacts import tar_gz

PARQUET = "application/vnd.apache.parquet"
GZIP = "application/gzip"


class JSONLResponse(StreamingResponse):
    media_type = "application/x-ndjson"


JSONL_DOC = {200: {"description": "JSON Lines, one item per line",
                   "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
FILES_DOC = {200: {"description": "format=jsonl: JSON Lines, one item per line; parquet: a Parquet file; "
                                  "hf: a .tar.gz of a `datasets` save_to_disk directory",
                   "content": {"application/x-ndjson": {"schema": {"type": "string"}}, PARQUET: _BINARY,
                               GZIP: _BINARY}}}

FormatQ = Annotated[Literal["jsonl", "parquet", "hf"],
                    Query(description="jsonl (default), parquet, or hf: a datasets save_to_disk directory as .tar.gz")]
StyleQ = Annotated[Literal["conversational", "standard"],
                   Query(description="conversational (default): chat messages; standard: plain text (prompts "
                                     "must then be a single user message)")]


def jsonl(records: list[dict]) -> JSONLResponse:
    return JSONLResponse(json.dumps(r) + "\n" for r in records)


def file_answer(records: list[dict], *, fmt: str, kind: Literal["prompts", "pairs"], style: str,
                name: str) -> FileResponse:
    """A Parquet file or a dataset directory's .tar.gz of `records`, named `name`."""
    if fmt == "hf" and not records:
        raise HTTPException(409, [{"loc": ["query", "format"], "msg": f"no {kind} yet: a datasets directory needs "
                                   "at least one row (jsonl and parquet answer empty files)", "type": "conflict"}])
    tmp = Path(tempfile.mkdtemp(prefix="autodidact-export-"))
    try:
        if fmt == "parquet":
            path, media = formats.write(records, tmp / f"{name}.parquet", "parquet", kind, style), PARQUET
        else:
            directory = formats.write(records, tmp / name, "hf", kind, style)
            path, media = tar_gz(directory, tmp / f"{name}.tar.gz"), GZIP
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FileResponse(path, media_type=media, filename=path.name,
                        background=BackgroundTask(shutil.rmtree, tmp, ignore_errors=True))


def records_or_422(make, rows, style: str) -> list[dict]:
    """`make(rows, style)`, with the standard style's refusal of chat prompts as a 422."""
    try:
        return make(rows, style)
    except ValueError as exc:
        raise HTTPException(422, [{"loc": ["query", "style"], "msg": str(exc), "type": "invalid"}])
