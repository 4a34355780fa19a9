"""Logging for every process: one setup function and the ids every record carries.

`configure_logging` is called by the gateway, the Celery workers and beat (through Celery's
`setup_logging` signal, see shared/metrics.py) and the embedded mode. It installs one handler on
the root logger that writes text or JSON lines (`log_format`), at `log_level`.

Which run, round, stage and task a record belongs to lives in a context variable: the Celery
task signals bind the task's ids (shared/metrics.py), `shared.stages` binds the run, round and
stage once it has claimed a StageTask, the conductor binds the round it advances, and the
embedded driver binds its run. A filter on the handler copies them onto every record, so library
code logs as usual and never passes ids around. Context variables (not thread-locals) so the
heartbeat thread can run in a copy of its task's context.
"""
from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

# The ids a record carries when known, in this order in text lines.
FIELDS = ("run_id", "round", "stage", "task_id")
# Also kept in the context and written in JSON lines: the Celery task's name and message id, and
# the rank of a launched training process.
EXTRA = ("task", "celery_id", "rank")
_context: contextvars.ContextVar[dict] = contextvars.ContextVar("autodidact_log_context", default={})


def current_context() -> dict:
    """The ids bound in this context (a copy)."""
    return dict(_context.get())


def bind(**ids) -> contextvars.Token:
    """Add ids to this context (None values are ignored); returns the token that `unbind` takes."""
    return _context.set({**_context.get(), **{k: v for k, v in ids.items() if v is not None}})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


@contextmanager
def log_context(**ids) -> Iterator[None]:
    """Records logged inside the block carry `ids` (besides those already bound)."""
    token = bind(**ids)
    try:
        yield
    finally:
        unbind(token)


class ContextFilter(logging.Filter):
    """Copies the bound ids onto the record (an id passed with `extra=` wins) and renders them for
    text lines as `[run=.. round=.. stage=.. task=..]`."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        for key in FIELDS + EXTRA:
            if getattr(record, key, None) is None:
                setattr(record, key, ctx.get(key))
        shown = [f"{k.removesuffix('_id')}={getattr(record, k)}" for k in FIELDS if getattr(record, k) is not None]
        record.ids = f" [{' '.join(shown)}]" if shown else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: timestamp (UTC, ISO 8601), level, logger, message, the known ids,
    and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"timestamp": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key in FIELDS + EXTRA:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(ids)s: %(message)s"


def make_handler(log_format: str, stream=None) -> logging.Handler:
    if log_format not in ("text", "json"):
        raise ValueError(f"log_format must be 'text' or 'json', not {log_format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler._autodidact = True  # type: ignore[attr-defined]  # ours: replaced when configured again
    return handler


def configure_logging(level: str | int | None = None, *, default: str = "INFO", settings=None) -> None:
    """Install the root handler of this process. The level is `level` (a command-line option),
    else the `log_level` setting, else `default` (the command's own: INFO for services, WARNING for
    the embedded mode, whose progress bars would drown in INFO lines). Calling it again replaces
    the handler it installed before."""
    from shared.config import get_settings

    s = settings or get_settings()
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_autodidact", False)]:
        root.removeHandler(h)
    root.addHandler(make_handler(s.log_format))
    chosen = level or s.log_level or default
    root.setLevel(chosen.upper() if isinstance(chosen, str) else chosen)
