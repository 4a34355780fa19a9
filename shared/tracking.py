"""Experiment tracking: each Autodidact run is one MLflow run and/or one TensorBoard log directory.

Who logs what (the callers hand plain data; nothing here touches the database):
- the conductor: the run's params when it starts, each round's metrics when it closes (held-out
  evaluation with its intervals and degeneration rates, the gate's verdict, training summaries,
  stage seconds; step = round number), the accuracy plot and a sample of the round's preference
  pairs, and the run's end;
- the training task: the trainer's per-step metrics (`train/loss`, `train/margin`, ...) at a global
  step that goes on increasing across rounds.

The tracked run is found again from any process (worker, conductor, embedded mode) without stored
state: an MLflow run carries the tag `autodidact_run_key` (run id + creation time, so two databases
sharing one store do not meet) and is looked up by it; a TensorBoard directory is named after it.

Tracking never fails a round: every backend call is guarded. A backend's first error in a process
is logged once as a warning; that backend is then skipped for `RETRY_AFTER` seconds (a tracking
server that is down must not slow every training step), then tried again quietly.
Left out: model weights as artifacts (the artifact store has them), system metrics.
"""
from __future__ import annotations

import json
import logging
import math
import struct
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

BACKENDS = ("mlflow", "tensorboard")
RETRY_AFTER = 300.0  # seconds a failing backend is skipped
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_lock = threading.Lock()


def parse_backends(value: str | None, *, allow_empty: bool = False) -> list[str]:
    """`"mlflow,tensorboard"` -> ["mlflow", "tensorboard"]; "none" -> []; ValueError naming the
    allowed names otherwise. With allow_empty, "" is accepted (a run that uses the settings)."""
    names = [n.strip().lower() for n in (value or "").split(",") if n.strip()]
    if not names:
        if allow_empty:
            return []
        raise ValueError(f"tracking must be 'none' or a comma list of {', '.join(BACKENDS)}; got {value!r}")
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown tracking backend(s) {unknown}: use 'none' or a comma list of "
                         f"{', '.join(BACKENDS)}")
    return list(dict.fromkeys(names))


def effective_backends(setting: str, override: str | None) -> list[str]:
    """A run's backends: its own `tracking` (config field) when set, else the deployment's."""
    return parse_backends(override) if override else parse_backends(setting)


@dataclass(frozen=True)
class TrackedRun:
    run_id: int
    method: str
    created_at: datetime

    @property
    def name(self) -> str:
        return f"run-{self.run_id}-{self.method}"

    @property
    def key(self) -> str:
        return f"{self.run_id}-{self.created_at:%Y%m%dT%H%M%S}"


# ---------------------------------------------------------------- plain-data helpers
def flatten(data: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts as {"a/b": float}; booleans become 0/1, a pair of numbers (an
    interval) becomes `/low` and `/high`; strings, None, NaN and longer lists (per-prompt vectors)
    are left out."""
    out: dict[str, float] = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{name}/"))
        elif isinstance(v, (bool, int, float)):
            if not (isinstance(v, float) and not math.isfinite(v)):
                out[name] = float(v)
        elif isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[f"{name}/low"], out[f"{name}/high"] = float(v[0]), float(v[1])
    return out


def flat_params(data: dict, prefix: str = "") -> dict[str, str]:
    """Nested config dicts as {"a.b": text}: what a tracker shows as params."""
    out: dict[str, str] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_CHARS]
    return out


# ---------------------------------------------------------------- backends
class _MLflow:
    """One MLflow run per Autodidact run, in experiment `experiment` of the store at `uri`."""

    def __init__(self, uri: str, experiment: str):
        from shared.config import quiet_tracker_clients

        quiet_tracker_clients()  # before mlflow is imported: it starts its telemetry at import
        from mlflow.tracking import MlflowClient

        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.uri, self.experiment = uri, experiment
        self.client = MlflowClient(tracking_uri=uri)
        self._runs: dict[str, str] = {}

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):  # else MLflow would put artifacts under the current directory
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlflow-artifacts").resolve().as_uri()
        try:
            return self.client.create_experiment(self.experiment, artifact_location=location)
        except Exception:  # created meanwhile by another process
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return exp.experiment_id

    def run_id(self, run: TrackedRun) -> str:
        if run.key not in self._runs:
            exp = self._experiment_id()
            found = self.client.search_runs([exp], filter_string=f"tags.autodidact_run_key = '{run.key}'",
                                            max_results=1)
            if found:
                self._runs[run.key] = found[0].info.run_id
            else:
                self._runs[run.key] = self.client.create_run(
                    exp, run_name=run.name, tags={"autodidact_run_key": run.key,
                                                  "autodidact_run_id": str(run.run_id), "method": run.method}
                ).info.run_id
        return self._runs[run.key]

    def params(self, run: TrackedRun, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id(run), params=items[i:i + 100])

    def metrics(self, run: TrackedRun, rows: list[tuple[int, dict[str, float]]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step) for step, values in rows for k, v in values.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id(run), metrics=items[i:i + 1000])

    def tags(self, run: TrackedRun, tags: dict[str, str], step: int) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id(run), tags=[RunTag(k, v[:5000]) for k, v in tags.items()])

    def artifact(self, run: TrackedRun, name: str, data: bytes, step: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(name).name
            path.write_bytes(data)
            parent = str(Path(name).parent)
            self.client.log_artifact(self.run_id(run), str(path), None if parent == "." else parent)

    def finish(self, run: TrackedRun, status: str) -> None:
        self.client.set_terminated(self.run_id(run), status="FINISHED" if status == "succeeded" else
                                   "KILLED" if status in ("cancelled", "stopped") else "FAILED")
        self._runs.pop(run.key, None)


class _TensorBoard:
    """One log directory per Autodidact run under `root`; one event file per process."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._writers: dict[str, Any] = {}

    def writer(self, run: TrackedRun):
        if run.key not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            if len(self._writers) >= 8:  # a long-lived worker: close the oldest run's file
                self._writers.pop(next(iter(self._writers))).close()
            self._writers[run.key] = SummaryWriter(log_dir=str(self.root / f"{run.name}-{run.key.split('-', 1)[1]}"))
        return self._writers[run.key]

    def params(self, run: TrackedRun, params: dict[str, str]) -> None:
        table = "| param | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in sorted(params.items()))
        self.writer(run).add_text("params", table, 0)
        self.writer(run).flush()

    def metrics(self, run: TrackedRun, rows: list[tuple[int, dict[str, float]]]) -> None:
        w = self.writer(run)
        for step, values in rows:
            for k, v in values.items():
                w.add_scalar(k, v, step)
        w.flush()

    def tags(self, run: TrackedRun, tags: dict[str, str], step: int) -> None:
        for k, v in tags.items():
            self.writer(run).add_text(k, v, step)
        self.writer(run).flush()

    def artifact(self, run: TrackedRun, name: str, data: bytes, step: int) -> None:
        w = self.writer(run)
        if name.endswith(".png"):
            from tensorboard.compat.proto.summary_pb2 import Summary

            width, height = struct.unpack(">II", data[16:24])  # the PNG's IHDR chunk
            image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
            w._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=name, image=image)]), step)
        else:
            w.add_text(name, "```\n" + data.decode("utf-8", "replace")[:20000] + "\n```", step)
        w.flush()

    def finish(self, run: TrackedRun, status: str) -> None:
        w = self._writers.pop(run.key, None)
        if w is not None:
            w.close()


# ---------------------------------------------------------------- the guarded fan-out
_clients: dict[tuple, Any] = {}  # (backend, target) -> client, per process
_down_until: dict[tuple, float] = {}  # (backend, target) -> monotonic time to try again
_warned: set[tuple] = set()


def _client(target: tuple):
    if target not in _clients:
        kind, where, experiment = target
        _clients[target] = _MLflow(where, experiment) if kind == "mlflow" else _TensorBoard(Path(where))
    return _clients[target]


class RunTracker:
    """Logs one Autodidact run to its backends; every call is guarded (see module docstring)."""

    def __init__(self, run: TrackedRun, targets: list[tuple]):
        self.run, self.targets = run, targets

    def __bool__(self) -> bool:
        return bool(self.targets)

    def _each(self, what: str, call: Callable[[Any], None]) -> None:
        for target in self.targets:
            if time.monotonic() < _down_until.get(target, 0.0):
                continue
            try:
                with _lock:
                    call(_client(target))
            except Exception as exc:  # noqa: BLE001 - a tracker must never fail a round
                _down_until[target] = time.monotonic() + RETRY_AFTER
                if target not in _warned:
                    _warned.add(target)
                    log.warning("experiment tracking: %s (%s) failed to log %s of run %s: %s: %s; skipping it "
                                "for %.0f s (tracking never fails a run)", target[0], target[1], what,
                                self.run.run_id, type(exc).__name__, exc, RETRY_AFTER)
                else:
                    log.debug("experiment tracking: %s failed again: %s", target[0], exc)

    def log_params(self, params: dict) -> None:
        flat = flat_params(params)
        self._each("params", lambda c: c.params(self.run, flat))

    def log_metrics(self, rows: list[tuple[int, dict]]) -> None:
        """rows: (step, nested metrics dict), flattened with `flatten`."""
        flat = [(step, f) for step, values in rows if (f := flatten(values))]
        if flat:
            self._each("metrics", lambda c: c.metrics(self.run, flat))

    def log_text(self, tags: dict[str, str], step: int = 0) -> None:
        self._each("tags", lambda c: c.tags(self.run, tags, step))

    def log_artifact(self, name: str, data: bytes, step: int = 0) -> None:
        self._each(name, lambda c: c.artifact(self.run, name, data, step))

    def finish(self, status: str) -> None:
        self._each("the end", lambda c: c.finish(self.run, status))


def run_tracker(settings, run: TrackedRun, override: str | None = None) -> RunTracker:
    """The tracker of `run` under `settings` (shared.config.Settings) and the run's own `tracking`
    config value. An invalid stored value tracks nothing (it was validated when the run was made)."""
    try:
        names = effective_backends(settings.tracking, override)
    except ValueError as exc:
        log.warning("experiment tracking off for run %s: %s", run.run_id, exc)
        names = []
    tracking_dir = Path(settings.artifact_dir) / "tracking"
    targets = []
    for name in names:
        if name == "mlflow":
            uri = settings.tracking_uri or f"sqlite:///{(tracking_dir / 'mlflow.db').resolve()}"
            targets.append(("mlflow", uri, settings.tracking_experiment))
        else:
            targets.append(("tensorboard", str(settings.tensorboard_dir or tracking_dir / "tensorboard"), ""))
    return RunTracker(run, targets)


def step_rows(steps: list[dict], prefix: str, offset: int) -> list[tuple[int, dict]]:
    """The trainer's per-step dicts as (global step, {prefix/metric: value}) rows: global step =
    `offset` (the steps earlier rounds logged) + the step within this training."""
    return [(offset + int(s["step"]), {f"{prefix}/{k}": v for k, v in s.items() if k != "step" and v is not None})
            for s in steps]
