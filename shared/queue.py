"""The one Celery app. Queues are named after services; tasks are routed by their name prefix.

Reliability (see ARCHITECTURE.md): tasks ack late and are rejected back to the queue when a worker
dies, each worker prefetches one message, Redis redelivers an unacked message after
`visibility_timeout` seconds (longer than the longest training task), and results live in the
database, not in a result backend. Retries happen only on transient errors, inside the tasks.
"""
from __future__ import annotations

import logging
from collections import deque

from celery import Celery
from kombu import Queue

from shared import logs, metrics  # metrics connects the Celery signals: counts, timings, log ids
from shared.config import get_settings

QUEUES = ("conductor", "generation", "judging", "refinement", "training")
# Imported by every worker and by the inline executor. The recipes come first: they register in
# shared.recipes (the generic tasks look a run's method up there) and bring their own tasks.
TASK_MODULES = (
    "services.methods.registry",
    "services.gateway.conductor",
    "services.generation.tasks",
    "services.judging.tasks",
    "services.refinement.tasks",
    "services.training.tasks",
)


def route_for(task_name: str) -> str:
    """Queue of a task: the part of its name before the first dot."""
    queue = task_name.split(".", 1)[0]
    if queue not in QUEUES:
        raise ValueError(f"task {task_name!r} must be named '<queue>.<task>' with a queue in {QUEUES}")
    return queue


def make_celery() -> Celery:
    s = get_settings()
    app = Celery("autodidact", broker=s.redis_url, include=list(TASK_MODULES))
    app.conf.update(
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="conductor",
        task_routes=(lambda name, *a, **kw: {"queue": route_for(name)},),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": s.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule={
            "conductor-sweep": {"task": "conductor.sweep", "schedule": s.sweep_interval_seconds},
        },
        timezone="UTC",
    )
    return app


celery_app = make_celery()
if _profile_dir := get_settings().profile_dir:  # bench/overhead.py: where each task's time goes (off by default)
    from shared import profiling

    profiling.connect_celery_signals(_profile_dir)
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- tasks and dispatch
# Every task function is registered twice: with Celery (for workers) and in TASKS (for the inline
# executor of embedded mode), so both run exactly the same function.
TASKS: dict = {}
_inline_queue: deque = deque()


def task(name: str, **options):
    """Register `fn` as the task `name` ('<queue>.<verb>'); the plain function is returned."""
    route_for(name)

    def wrap(fn):
        celery_app.task(name=name, **options)(fn)
        TASKS[name] = fn
        return fn

    return wrap


def load_task_modules() -> None:
    import importlib

    for mod in TASK_MODULES:
        importlib.import_module(mod)


def enqueue(name: str, *args) -> None:
    """Send a task by name: to its Celery queue, or to the in-process queue in inline mode. A
    Celery message carries the sender's log ids (run, round) in a header, so the task's first lines
    carry them too (in-process, the embedded driver has bound the run already)."""
    if get_settings().execution == "inline":
        _inline_queue.append((name, args))
    else:
        ids = {k: v for k, v in logs.current_context().items() if k in ("run_id", "round")}
        celery_app.send_task(name, args=list(args), queue=route_for(name), headers={metrics.LOG_HEADER: ids})


def try_enqueue(name: str, *args) -> bool:
    """`enqueue`, but a broker that is down is logged instead of raised: for a send whose rows are
    already committed and that the conductor's sweep repeats anyway (it advances every open round),
    so failing the caller would only invite a retry that duplicates the committed work."""
    try:
        enqueue(name, *args)
        return True
    except Exception as exc:  # kombu / redis errors, whatever the transport raises
        log.warning("could not send %s%s now (the sweep will): %s", name, args, exc)
        return False


def run_inline(on_task=None, max_tasks: int | None = None) -> int:
    """Run queued tasks in this process until the queue is empty; return how many ran."""
    load_task_modules()
    ran = 0
    while _inline_queue and (max_tasks is None or ran < max_tasks):
        name, args = _inline_queue.popleft()
        with metrics.inline_task(name, args):
            TASKS[name](*args)
        ran += 1
        if on_task is not None:
            on_task(name, args)
    return ran
