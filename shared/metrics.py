"""Prometheus metrics of the workers, and the Celery signals that record them and bind log ids.

Every Celery task goes through the signal receivers at the bottom (prerun / postrun / retry), so
tasks stay thin: they are counted by queue, name and outcome and timed without a line in them.
`shared.stages.execute` records what only it knows (a StageTask's stage, seconds and outcome, a
transient-error retry), the conductor records the sweep's resends and each run's current round,
and the services record their own numbers through the small functions below (tokens generated,
training steps and pairs). The gateway's HTTP metrics are in services/gateway/metrics.py.

Celery's prefork pool runs tasks in child processes, so a worker with a metrics port uses
prometheus_client's multiprocess mode: every process writes its values to files in a directory of
its own (`serve_worker_metrics` empties it at start), a child that exits is marked dead, and an
HTTP server in the worker's main process sums the files on each scrape. Without a port (the
embedded mode, tests in one process) the same functions record into the process's default
registry and nothing is served.

Metric objects are made on first use rather than at import: prometheus_client decides at
creation whether a value lives in memory or in a multiprocess file.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

from shared import logs
from shared.config import set_metrics_multiproc_dir

log = logging.getLogger(__name__)
STAGE_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
LOG_HEADER = "autodidact_log"  # the message header with the sender's log ids (shared.queue.enqueue)
_served: Path | None = None  # the multiprocess directory, once serve_worker_metrics ran (children inherit it)


@lru_cache(maxsize=1)
def _m() -> SimpleNamespace:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        tasks=Counter("autodidact_tasks", "Celery tasks run, by queue, task name and outcome "
                      "(success, failure, retry)", ["queue", "task", "outcome"]),
        task_seconds=Histogram("autodidact_task_seconds", "Seconds a Celery task ran", ["queue", "task"],
                               buckets=STAGE_BUCKETS),
        stage_seconds=Histogram("autodidact_stage_seconds", "Seconds a StageTask's work took, by stage and "
                                "outcome (done, failed, retry, cancelled)", ["stage", "outcome"],
                                buckets=STAGE_BUCKETS),
        retries=Counter("autodidact_stage_retries", "StageTasks sent back to pending after a transient error",
                        ["stage"]),
        resends=Counter("autodidact_stage_resends", "StageTasks resent by the conductor's sweep, by reason "
                        "(pending: message lost; stale_heartbeat: worker died)", ["stage", "reason"]),
        tokens=Counter("autodidact_generated_tokens", "Tokens generated, by sample role", ["role"]),
        gen_seconds=Counter("autodidact_generation_seconds", "Seconds spent generating, by sample role", ["role"]),
        tokens_per_s=Gauge("autodidact_generation_tokens_per_second", "Tokens per second of the latest "
                           "generation call, by sample role", ["role"], multiprocess_mode="mostrecent"),
        steps=Counter("autodidact_training_steps", "Optimizer steps taken, by training kind (pairs, sft)", ["kind"]),
        pairs=Counter("autodidact_training_pairs", "Pairs (or SFT examples) trained on, counting epochs", ["kind"]),
        pairs_per_s=Gauge("autodidact_training_pairs_per_second", "Pairs (or SFT examples) per second of the "
                          "latest training job", ["kind"], multiprocess_mode="mostrecent"),
        # A run's rounds only go up: the largest value any process wrote is the current one.
        round=Gauge("autodidact_run_round", "Current round of each run", ["run_id"], multiprocess_mode="max"),
    )


# ---------------------------------------------------------------- what the services record
def stage_finished(stage: str, outcome: str, seconds: float) -> None:
    _m().stage_seconds.labels(stage, outcome).observe(seconds)


def stage_retried(stage: str) -> None:
    _m().retries.labels(stage).inc()


def stage_resent(stage: str, reason: str) -> None:
    _m().resends.labels(stage, reason).inc()


def tokens_generated(tokens: int, seconds: float, role: str = "policy") -> None:
    m = _m()
    m.tokens.labels(role).inc(tokens)
    m.gen_seconds.labels(role).inc(seconds)
    if seconds > 0:
        m.tokens_per_s.labels(role).set(tokens / seconds)


def training_step(kind: str) -> None:
    _m().steps.labels(kind).inc()


def training_finished(kind: str, items: float, seconds: float) -> None:
    """`items`: pairs (or SFT examples) trained on, epochs included."""
    m = _m()
    m.pairs.labels(kind).inc(items)
    if seconds > 0:
        m.pairs_per_s.labels(kind).set(items / seconds)


def current_round(run_id: int, number: int) -> None:
    _m().round.labels(str(run_id)).set(number)


# ---------------------------------------------------------------- tasks (Celery and inline)
def _queue(task_name: str) -> str:
    return task_name.split(".", 1)[0]  # the routing rule of shared/queue.route_for


def _ids(task_name: str, args, celery_id: str | None, headers: dict | None) -> dict:
    """Log ids of a task about to run: what its sender had bound (a header), its name, its
    message id, and its StageTask id (the first argument of every task outside the conductor's
    queue, whose tasks take a round id or nothing)."""
    ids = dict(headers or {})
    ids.update(task=task_name, celery_id=celery_id)
    if _queue(task_name) != "conductor" and args and isinstance(args[0], int):
        ids["task_id"] = args[0]
    return ids


def task_finished(task_name: str, outcome: str, seconds: float | None) -> None:
    m = _m()
    m.tasks.labels(_queue(task_name), task_name, outcome).inc()
    if seconds is not None:
        m.task_seconds.labels(_queue(task_name), task_name).observe(seconds)


@contextmanager
def inline_task(task_name: str, args, headers: dict | None = None) -> Iterator[None]:
    """What the Celery signals do, for a task run in-process (embedded mode): ids bound while it
    runs, counted and timed when it ends."""
    token = logs.bind(**_ids(task_name, args, None, headers))
    start, outcome = time.perf_counter(), "failure"
    try:
        yield
        outcome = "success"
    finally:
        task_finished(task_name, outcome, time.perf_counter() - start)
        logs.unbind(token)


# ---------------------------------------------------------------- the worker's server
def serve_worker_metrics(port: int, directory: Path | None = None) -> Path:
    """Switch this process (and the children it forks) to multiprocess collection in a fresh
    `directory` (default: one per port in the temp directory) and serve /metrics on `port` from a
    thread of this, the worker's main process. Call it before the worker starts its pool."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values

    global _served
    directory = directory or Path(tempfile.gettempdir()) / f"autodidact-metrics-{port}"
    shutil.rmtree(directory, ignore_errors=True)  # values of an earlier worker are not ours
    directory.mkdir(parents=True)
    set_metrics_multiproc_dir(directory)
    values.ValueClass = values.get_value_class()  # file-backed values from now on
    _m.cache_clear()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    start_http_server(port, registry=registry)
    _served = directory
    log.info("serving worker metrics on :%d/metrics (multiprocess directory %s)", port, directory)
    return directory


# ---------------------------------------------------------------- Celery signals
# Connected when shared.queue imports this module, which every worker and beat does.
def _connect_celery_signals() -> None:
    from celery import signals

    started: dict[str, tuple[float, object]] = {}  # celery id -> (start time, log-context token)

    @signals.setup_logging.connect(weak=False)
    def _logging(loglevel=None, **_) -> None:  # a receiver here means Celery leaves logging to us
        logs.configure_logging(loglevel)

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id=None, task=None, args=None, **_) -> None:
        headers = getattr(task.request, LOG_HEADER, None)
        token = logs.bind(**_ids(task.name, args or (), task_id, headers if isinstance(headers, dict) else None))
        started[task_id] = (time.perf_counter(), token)

    @signals.task_postrun.connect(weak=False)
    def _postrun(task_id=None, task=None, state=None, **_) -> None:
        start, token = started.pop(task_id, (None, None))
        outcome = {"SUCCESS": "success", "FAILURE": "failure", "RETRY": "retry"}.get(state, str(state).lower())
        task_finished(task.name, outcome, None if start is None else time.perf_counter() - start)
        if token is not None:
            logs.unbind(token)

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exit(**_) -> None:  # a prefork child leaving: its live gauges stop counting
        if _served is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


_connect_celery_signals()
