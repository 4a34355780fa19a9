"""A worker's pulse on the StageTask it runs. While `work` runs, a daemon thread stamps
`StageTask.heartbeat_at` every `heartbeat_seconds`; the conductor's sweep resends a running task
whose stamp went stale (its worker died), so a crash costs tens of seconds instead of the broker's
visibility timeout. The stamp is written only while the task is `running`, so a finished task is
never touched again. A failed stamp (database briefly gone) is logged and tried again next beat.
"""
from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import update

from shared.config import get_settings
from shared.db import session_scope
from shared.models import StageTask, utcnow

log = logging.getLogger(__name__)


def beat_once(stage_task_id: int) -> None:
    with session_scope() as s:
        s.exec(update(StageTask).where(StageTask.id == stage_task_id, StageTask.status == "running")
               .values(heartbeat_at=utcnow()))


@contextmanager
def heartbeat(stage_task_id: int, interval: float | None = None) -> Iterator[None]:
    """Stamp the task every `interval` seconds (default: the setting) until the block exits.
    In-process execution (embedded mode) has no sweep to read the stamps, and SQLite one writer:
    no thread there."""
    settings = get_settings()
    if settings.execution == "inline":
        yield
        return
    interval = settings.heartbeat_seconds if interval is None else interval
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval):
            try:
                beat_once(stage_task_id)
            except Exception as exc:  # keep beating: the next stamp may get through
                log.warning("heartbeat of stage task %s failed: %s", stage_task_id, exc)

    # In a copy of the task's context, so its warnings carry the task's log ids.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(loop,), name=f"heartbeat-{stage_task_id}",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=interval + 5)
