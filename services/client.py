"""A typed, synchronous Python client of the Autodidact HTTP API (httpx), used by the remote CLI
commands (services/cli_remote.py) and by scripts.

    from services.client import Client
    with Client("http://gateway:8000", api_key="adk_...") as api:
        ps = api.upload_prompt_set("prompts.jsonl", name="seed")
        run = api.create_run("spin", "base", [ps.id], rounds=3)
        run = api.wait(run.id)

One method per endpoint; answers come back as the gateway's own response models
(services/gateway/schemas.py, shared/models.py), so a field renamed on the server is renamed here
too. Listings that the API pages are iterators that fetch the next page when the caller gets there.
Files come as files: JSONL and Parquet written to the path given, a `datasets` directory or an
exported model (a .tar.gz on the wire) unpacked so that the path given is that directory.
Every 4xx/5xx becomes an `ApiError` carrying the status and the server's error items
(`{loc, msg, type}`, services/gateway/errors.py); a gateway that cannot be reached is an `ApiError`
with no status. URL and key default to the settings (`AUTODIDACT_URL`, `AUTODIDACT_API_KEY`).

Retries: reads, and creating requests (which always carry an `Idempotency-Key`, so a retry of a
request whose answer was lost creates nothing twice), are retried on transport errors and 503;
other changes (cancel, promote, revoke) only when the connection was never made. The client does
not import the gateway's routes, the database or the queue: it speaks HTTP only (import-linter).
"""
from __future__ import annotations

import json
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, NamedTuple, Optional, TypeVar

import httpx
from pydantic import BaseModel

from services.gateway.schemas import (
    BaseModels, KeyCreated, KeyPublic, ModelExport, RunDetail, RunSummary, TrainSteps,
)
from shared.models import ModelVersionPublic, PromptPublic, PromptSetPublic

FINISHED = ("succeeded", "failed", "cancelled", "stopped")
TRANSIENT_STATUS = (502, 503, 504)
FORMATS = ("jsonl", "parquet", "hf")  # of prompt-set and pair exports
M = TypeVar("M", bound=BaseModel)


class Health(BaseModel):
    """GET /healthz: database and broker status."""

    status: str
    database: str
    broker: str


class Download(NamedTuple):
    path: Path  # the file, or the directory a .tar.gz was unpacked to
    size: int  # bytes received
    lines: int  # records of a JSONL answer (0 for other formats)


class ApiError(Exception):
    """An error answer of the gateway (or no answer: `status_code` None). `errors` are the server's
    items `{loc, msg, type}`; str() renders them one per line, each with the field it names."""

    def __init__(self, status_code: Optional[int], errors: list[dict], *, method: str = "", url: str = ""):
        self.status_code, self.errors, self.method, self.url = status_code, errors, method, url
        super().__init__(self.message)

    @property
    def transient(self) -> bool:
        """Worth retrying later: the gateway unreachable, or a backing service down (503)."""
        return self.status_code is None or self.status_code in TRANSIENT_STATUS

    @property
    def message(self) -> str:
        lines = [_item_text(e) for e in self.errors] or ["(no detail)"]
        head = f"{self.status_code} {httpx.codes.get_reason_phrase(self.status_code)}" if self.status_code else "no answer"
        where = f" ({self.method} {self.url})" if self.method else ""
        if len(lines) == 1:
            return f"{head}{where}: {lines[0]}"
        return f"{head}{where}:\n" + "\n".join(f"  - {line}" for line in lines)


class ExportFailed(ApiError):
    """The training worker could not export a model version: `export.error` is the server's text
    (status_code None: the gateway answered 200, the merge failed). export_model() queues it again."""

    def __init__(self, export: ModelExport):
        self.export = export
        url = f"/v1/models/{export.version_id}/export?dtype={export.dtype}"
        super().__init__(None, [{"loc": [], "type": "export_failed",
                                 "msg": f"the export of version {export.version_id} in {export.dtype} failed: "
                                        f"{(export.error or '(no error text)').strip()}"}], method="GET", url=url)

    @property
    def transient(self) -> bool:
        return False  # the gateway answered; the worker's merge failed

    @property
    def message(self) -> str:
        return f"{self.errors[0]['msg']} ({self.method} {self.url})"


def _item_text(item: dict) -> str:
    loc = ".".join(str(p) for p in item.get("loc") or [])
    return f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", ""))


def _errors_of(response: httpx.Response) -> list[dict]:
    """The error items of an error answer; a body that is not the API's shape (a proxy's HTML
    page) becomes one item with the start of its text."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str):
        return [{"loc": [], "msg": detail, "type": "error"}]
    if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        return detail
    text = response.text.strip()[:300] if response.text else ""
    return [{"loc": [], "msg": text or response.reason_phrase or "error", "type": "error"}]


class Client:
    """The API of one gateway with one key. Use as a context manager, or call close()."""

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None, *, timeout: float = 60.0,
                 retries: int = 3, transport: Optional[httpx.BaseTransport] = None):
        from shared.config import get_settings

        settings = get_settings()
        self.url = (url or settings.url).rstrip("/")
        self.api_key = api_key or settings.api_key
        self.retries = retries
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ transport
    def _send(self, method: str, path: str, *, idempotent: bool, stream: bool = False,
              **kw: Any) -> httpx.Response:
        """One request, retried as the module docstring says; an error answer raises ApiError.
        `kw["files"]` may be a callable giving fresh files per attempt (an upload re-read)."""
        files = kw.pop("files", None)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                request = self._http.build_request(method, path, files=files() if callable(files) else files, **kw)
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                never_sent = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
                if last or not (idempotent or never_sent):
                    raise ApiError(None, [{"loc": [], "type": "unreachable", "msg":
                                           f"cannot reach the gateway at {self.url}: {type(exc).__name__}: {exc}; "
                                           "is it running? (--url or AUTODIDACT_URL)"}], method=method, url=path) from exc
                self._pause(attempt, None)
                continue
            if response.is_success:
                return response
            if stream:
                response.read()
            retry = (response.status_code in TRANSIENT_STATUS
                     or (response.status_code == 409 and _idempotency_in_progress(response)))
            if retry and not last and (idempotent or response.status_code == 503):
                self._pause(attempt, response.headers.get("Retry-After"))
                continue
            errors = _errors_of(response)
            if response.status_code == 401 and not self.api_key:
                errors.append({"loc": [], "type": "hint",
                               "msg": "no API key was given: pass --api-key or set AUTODIDACT_API_KEY"})
            raise ApiError(response.status_code, errors, method=method, url=path)
        raise AssertionError("unreachable")

    @staticmethod
    def _pause(attempt: int, retry_after: Optional[str]) -> None:
        try:
            wait = float(retry_after) if retry_after else 0.5 * 2 ** attempt
        except ValueError:
            wait = 0.5 * 2 ** attempt
        time.sleep(min(wait, 10.0))

    def _get(self, path: str, model: type[M], **params: Any) -> M:
        params = {k: v for k, v in params.items() if v is not None}
        return model.model_validate(self._send("GET", path, idempotent=True, params=params).json())

    def _post(self, path: str, model: type[M], body: Any = None, *, create: bool = False,
              idempotent: bool = False, idempotency_key: Optional[str] = None) -> M:
        """POST; a creating request carries an Idempotency-Key (the caller's, or a fresh one
        shared by this call's retries). `idempotent`: an endpoint that does the same whatever
        times it is called (a model export), retried like a read."""
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex} if create else {}
        response = self._send("POST", path, idempotent=create or idempotent, json=body, headers=headers)
        return model.model_validate(response.json())

    def _cursor_pages(self, path: str, model: type[M], page_size: int) -> Iterator[M]:
        cursor = None
        while True:
            page = self._send("GET", path, idempotent=True,
                              params={"limit": page_size, **({"cursor": cursor} if cursor else {})}).json()
            yield from (model.model_validate(item) for item in page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def _download(self, path: str, out: Path | str, **params: Any) -> Download:
        """Stream an answer to `out` (through a temporary file: a failed download leaves nothing)."""
        out = Path(out)
        tmp = out.with_name(f".{out.name}.part")
        size = lines = 0
        response = self._send("GET", path, idempotent=True, stream=True,
                              params={k: v for k, v in params.items() if v is not None})
        try:
            with open(tmp, "wb") as f:
                for chunk in response.iter_bytes():
                    f.write(chunk)
                    size += len(chunk)
                    lines += chunk.count(b"\n")
            tmp.replace(out)
        except httpx.TransportError as exc:
            raise ApiError(None, [{"loc": [], "msg": f"download cut off: {exc}", "type": "unreachable"}],
                           method="GET", url=path) from exc
        finally:
            response.close()
            tmp.unlink(missing_ok=True)
        return Download(out, size, lines)

    def _download_as(self, path: str, out: Path | str, fmt: str, **params: Any) -> Download:
        """An export in `fmt`: jsonl and parquet written to `out`; hf (a .tar.gz of a datasets
        save_to_disk directory) unpacked so that `out` is that directory (absent or empty before)."""
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
        if fmt != "hf":
            got = self._download(path, out, format=fmt, **params)
            return got if fmt == "jsonl" else got._replace(lines=0)
        out = Path(out)
        _check_new_dir(out)
        archive = out.with_name(f".{out.name}.tar.gz")
        try:
            got = self._download(path, archive, format=fmt, **params)
            unpack(archive, out)
        finally:
            archive.unlink(missing_ok=True)
        return Download(out, got.size, 0)

    def _upload(self, path: str, file: Path | str, media_type: str, model: type[M], fields: dict[str, Any],
                *, idempotency_key: Optional[str] = None) -> M:
        """A creating multipart POST of `file` (form field `file`) and the form fields that are not None."""
        file = Path(file)
        opened: list[BinaryIO] = []

        def files() -> dict:  # a fresh handle per attempt: a retry re-reads the file from its start
            opened.append(open(file, "rb"))
            return {"file": (file.name, opened[-1], media_type)}

        try:
            response = self._send("POST", path, idempotent=True, files=files,
                                  data={k: v for k, v in fields.items() if v is not None},
                                  headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex})
        finally:
            for f in opened:
                f.close()
        return model.model_validate(response.json())

    def _jsonl(self, path: str, **params: Any) -> Iterator[dict]:
        response = self._send("GET", path, idempotent=True, stream=True,
                              params={k: v for k, v in params.items() if v is not None})
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield json.loads(line)
        finally:
            response.close()

    # ------------------------------------------------------------ health
    def health(self) -> Health:
        """Database and broker status; answered (not raised) also when the gateway is degraded."""
        try:
            response = self._http.get("/healthz")
        except httpx.TransportError as exc:
            raise ApiError(None, [{"loc": [], "msg": f"cannot reach the gateway at {self.url}: {exc}",
                                   "type": "unreachable"}], method="GET", url="/healthz") from exc
        if response.status_code in (200, 503):
            return Health.model_validate(response.json())
        raise ApiError(response.status_code, _errors_of(response), method="GET", url="/healthz")

    # ------------------------------------------------------------ prompt sets
    def create_prompt_set(self, name: str, items: list[dict], *, description: str = "", split: str = "train",
                          idempotency_key: Optional[str] = None) -> PromptSetPublic:
        """A prompt set from items ({prompt, reference?, constraints?, answer?, topic?})."""
        body = {"name": name, "description": description, "split": split, "items": items}
        return self._post("/v1/prompt-sets", PromptSetPublic, body, create=True, idempotency_key=idempotency_key)

    def upload_prompt_set(self, path: Path | str, *, name: Optional[str] = None, description: Optional[str] = None,
                          split: Optional[str] = None, map: Optional[Mapping[str, str]] = None,
                          idempotency_key: Optional[str] = None) -> PromptSetPublic:
        """A prompt set from a JSONL or Parquet file (told apart by Parquet's PAR1 magic, as the
        gateway does), streamed as a multipart upload (name: the file's, by default). `map` names
        the Parquet column of a prompt field whose column is named otherwise, e.g.
        {"prompt": "instruction", "reference": "output"}; the gateway refuses it with a JSONL file."""
        with open(path, "rb") as f:
            parquet = f.read(4) == b"PAR1"
        maps = [f"{field}={column}" for field, column in (map or {}).items()] or None
        fields = {"name": name, "description": description, "split": split, "map": maps}
        media = "application/vnd.apache.parquet" if parquet else "application/x-ndjson"
        return self._upload("/v1/prompt-sets", path, media, PromptSetPublic, fields, idempotency_key=idempotency_key)

    def prompt_sets(self, *, page_size: int = 50) -> Iterator[PromptSetPublic]:
        """The workspace's prompt sets, newest first (pages fetched as you iterate)."""
        return self._cursor_pages("/v1/prompt-sets", PromptSetPublic, page_size)

    def prompt_set(self, set_id: int) -> PromptSetPublic:
        return self._get(f"/v1/prompt-sets/{set_id}", PromptSetPublic)

    def prompts(self, set_id: int, *, page_size: int = 100) -> Iterator[PromptPublic]:
        """The set's prompts in order (pages fetched as you iterate)."""
        offset = 0
        while True:
            page = self._send("GET", f"/v1/prompt-sets/{set_id}/prompts", idempotent=True,
                              params={"offset": offset, "limit": page_size}).json()
            yield from (PromptPublic.model_validate(p) for p in page["items"])
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return

    def export_prompt_set(self, set_id: int) -> Iterator[dict]:
        """The set's items in the upload format."""
        return self._jsonl(f"/v1/prompt-sets/{set_id}/export")

    def download_prompt_set(self, set_id: int, out: Path | str, *, format: str = "jsonl",
                            style: str = "conversational") -> Download:
        """The set as a JSONL file in the upload format, a Parquet file, or (hf) a `datasets`
        directory at `out`; the last two have columns prompt, reference, constraints, answer, topic
        and upload again (Parquet). style="standard": plain-text prompts (refuses chat prompts)."""
        return self._download_as(f"/v1/prompt-sets/{set_id}/export", out, format, style=style)

    # ------------------------------------------------------------ runs
    def create_run(self, method: str, base_model: str, prompt_set_ids: list[int], *,
                   eval_prompt_set_ids: Optional[list[int]] = None, rounds: int = 1,
                   config: Optional[dict] = None, continuous: bool = False, stopping: Optional[dict] = None,
                   idempotency_key: Optional[str] = None) -> RunDetail:
        body = {"method": method, "base_model": base_model, "prompt_set_ids": list(prompt_set_ids),
                "eval_prompt_set_ids": list(eval_prompt_set_ids or []), "rounds": rounds,
                "config": config or {}, "continuous": continuous, "stopping": stopping or {}}
        return self._post("/v1/runs", RunDetail, body, create=True, idempotency_key=idempotency_key)

    def runs(self, *, page_size: int = 50) -> Iterator[RunSummary]:
        """The workspace's runs, newest first, without rounds (pages fetched as you iterate)."""
        return self._cursor_pages("/v1/runs", RunSummary, page_size)

    def run(self, run_id: int) -> RunDetail:
        """A run with its rounds: stage status and progress, timings, metrics."""
        return self._get(f"/v1/runs/{run_id}", RunDetail)

    def cancel_run(self, run_id: int) -> RunDetail:
        return self._post(f"/v1/runs/{run_id}/cancel", RunDetail)

    def add_prompt_sets(self, run_id: int, prompt_set_ids: list[int]) -> RunDetail:
        """Add prompt sets to a running run; they join from the next round."""
        return self._post(f"/v1/runs/{run_id}/prompt-sets", RunDetail, {"prompt_set_ids": list(prompt_set_ids)})

    def train_steps(self, run_id: int, round_number: int) -> TrainSteps:
        """Per-step trainer metrics of one round."""
        return self._get(f"/v1/runs/{run_id}/rounds/{round_number}/train-steps", TrainSteps)

    def pairs(self, run_id: int, *, round_number: Optional[int] = None) -> Iterator[dict]:
        """Preference pairs in TRL's conversational {prompt, chosen, rejected} format."""
        return self._jsonl(f"/v1/runs/{run_id}/pairs", round=round_number)

    def download_pairs(self, run_id: int, out: Path | str, *, round_number: Optional[int] = None,
                       format: str = "jsonl", style: str = "conversational") -> Download:
        """The run's pairs (TRL's prompt / chosen / rejected, plus round, source, margin) as JSONL,
        Parquet, or (hf) a `datasets` directory at `out` for `load_from_disk`. style="standard":
        plain text (refuses chat prompts). hf of no pairs is a 409."""
        return self._download_as(f"/v1/runs/{run_id}/pairs", out, format, round=round_number, style=style)

    def plot(self, run_id: int) -> bytes:
        """Held-out accuracy and response length per round, as PNG bytes (409 before any evaluation)."""
        return self._send("GET", f"/v1/runs/{run_id}/plot.png", idempotent=True).content

    def download_plot(self, run_id: int, out: Path | str) -> Download:
        return self._download(f"/v1/runs/{run_id}/plot.png", out)

    def wait(self, run_id: int, *, interval: float = 2.0, timeout: Optional[float] = None) -> RunDetail:
        """Poll the run until it has ended (any of FINISHED) and return it; TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (run := self.run(run_id)).status not in FINISHED:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.status} after {timeout} s")
            time.sleep(interval)
        return run

    # ------------------------------------------------------------ model versions
    def models(self, *, page_size: int = 50) -> Iterator[ModelVersionPublic]:
        """The workspace's model versions, newest first (pages fetched as you iterate)."""
        return self._cursor_pages("/v1/models", ModelVersionPublic, page_size)

    def model(self, version_id: int) -> ModelVersionPublic:
        return self._get(f"/v1/models/{version_id}", ModelVersionPublic)

    def promote_model(self, version_id: int) -> ModelVersionPublic:
        """Mark a version as the one to serve (admin keys)."""
        return self._post(f"/v1/models/{version_id}/promote", ModelVersionPublic)

    def base_models(self) -> list[str]:
        """Accepted values of a run's base_model on this deployment."""
        return self._get("/v1/base-models", BaseModels).names

    def export_model(self, version_id: int, *, dtype: str = "auto") -> ModelExport:
        """Ask for the version merged into its base as a transformers directory in `dtype` (auto:
        the base's). `ready` when it was exported before, else `pending`: queued on the training
        queue (again after a failure; a pending one is left as it is, so a retry is harmless)."""
        return self._post(f"/v1/models/{version_id}/export", ModelExport, {"dtype": dtype}, idempotent=True)

    def model_export(self, version_id: int, *, dtype: str = "auto") -> ModelExport:
        """The state of the version's export in `dtype`: absent, pending, ready or failed (`error`)."""
        return self._get(f"/v1/models/{version_id}/export", ModelExport, dtype=dtype)

    def download_model_export(self, version_id: int, out: Path | str, *, dtype: str = "auto") -> Download:
        """The ready export as its .tar.gz (one top directory, autodidact-v<id>/); 409 before."""
        return self._download(f"/v1/models/{version_id}/export/archive", out, dtype=dtype)._replace(lines=0)

    def export_model_and_download(self, version_id: int, out_dir: Path | str, *, dtype: str = "auto",
                                  timeout: Optional[float] = 3600, interval: float = 2.0,
                                  on_status: Optional[Callable[[ModelExport], None]] = None) -> Path:
        """Export the version, wait until it is ready, download it and unpack it so that `out_dir`
        (absent or empty) is the model directory: `AutoModelForCausalLM.from_pretrained(out_dir)`.
        `on_status` sees every state polled. A failed merge raises ExportFailed with the worker's
        error; TimeoutError after `timeout` s (the export goes on: call again to pick it up)."""
        out_dir = Path(out_dir)
        _check_new_dir(out_dir)  # before the gateway is asked for anything
        deadline = None if timeout is None else time.monotonic() + timeout
        st = self.export_model(version_id, dtype=dtype)
        while True:
            if on_status is not None:
                on_status(st)
            if st.status == "ready":
                break
            if st.status == "failed":
                raise ExportFailed(st)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"the export of version {version_id} in {dtype} is still {st.status} after "
                                   f"{timeout} s; it goes on: call again later to download it")
            time.sleep(interval)
            st = self.model_export(version_id, dtype=dtype)
            if st.status == "absent":  # its files were cleared meanwhile: ask again
                st = self.export_model(version_id, dtype=dtype)
        archive = out_dir.with_name(f".{out_dir.name}.tar.gz")
        try:
            self.download_model_export(version_id, archive, dtype=dtype)
            return unpack(archive, out_dir)
        finally:
            archive.unlink(missing_ok=True)

    # ------------------------------------------------------------ API keys (admin keys)
    def create_key(self, *, role: str = "member", expires_in_seconds: Optional[int] = None) -> KeyCreated:
        """A new key of this workspace; `.key` is the only time the key itself is shown."""
        body = {"role": role, **({"expires_in_seconds": expires_in_seconds} if expires_in_seconds else {})}
        return self._post("/v1/keys", KeyCreated, body)

    def keys(self) -> list[KeyPublic]:
        return [KeyPublic.model_validate(k) for k in self._send("GET", "/v1/keys", idempotent=True).json()]

    def revoke_key(self, key_id: int) -> KeyPublic:
        return self._post(f"/v1/keys/{key_id}/revoke", KeyPublic)


def _check_new_dir(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} exists and is not an empty directory; give a new one")


def unpack(archive: Path | str, dest: Path | str) -> Path:
    """Extract a .tar.gz whose members sit under one top directory (the gateway's exports) so that
    `dest` becomes that directory. Every member is checked before anything is written: an absolute
    name, a `..`, a link or a device is refused (ValueError), and tarfile's "data" filter checks
    again. Extracted into a sibling directory renamed at the end, so `dest` exists only complete."""
    archive, dest = Path(archive), Path(dest)
    _check_new_dir(dest)
    staging = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                p = PurePosixPath(m.name)
                if p.is_absolute() or ".." in p.parts or "\\" in m.name or not (m.isfile() or m.isdir()):
                    raise ValueError(f"{archive.name}: refusing member {m.name!r} (an absolute path, '..', a link "
                                     "or a special file); not unpacked")
            tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
            if len(tops) != 1:
                raise ValueError(f"{archive.name}: expected one top directory, found {sorted(tops)[:5]}")
            top = tops.pop()
            inner = []
            for m in members:
                rel = PurePosixPath(m.name).relative_to(top)
                if rel.parts:
                    m.name = str(rel)
                    inner.append(m)
                elif not m.isdir():
                    raise ValueError(f"{archive.name}: its top member {top!r} is a file, not a directory")
            staging.mkdir()
            tar.extractall(staging, members=inner, filter="data")
        if dest.exists():
            dest.rmdir()  # empty, checked above
        staging.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def _idempotency_in_progress(response: httpx.Response) -> bool:
    """409 'a request with this Idempotency-Key is still being processed' (services/gateway/idempotency.py)."""
    return any(e.get("loc") == ["header", "Idempotency-Key"] for e in _errors_of(response))
