"""Where a thread's time goes: model compute against everything else (bench/overhead.py).

A sampler thread looks at one thread's stack every few milliseconds and files each sample under the
first of these that its stack contains:
- `load/save`: reading or writing model weights, adapters or tokenizers (from_pretrained,
  save_pretrained, load_adapter, peft wrapping, safetensors);
- `compute`: a torch module's forward, autograd's backward, an optimizer step, the local
  backend's LM head and token choice;
- `database`: SQLAlchemy / the SQLite or Postgres driver;
- `other`: the rest (queue, conductor, judging code, tokenization, Python between tensors).

Off by default. With AUTODIDACT_PROFILE_DIR set, shared.queue connects `connect_celery_signals`:
each worker process then samples the thread that runs its tasks, from task_prerun to task_postrun,
and appends one JSON line per task to `<dir>/<pid>.jsonl` (task name, wall-clock start and end,
the samples as (time, kind) and the non-compute places). bench/overhead.py lays the lines of all
workers on one time line; the time when no worker runs a task is the queue's (waits, dispatch,
serialisation, idle gaps between stages).
"""
from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOAD = ("from_pretrained", "save_pretrained", "load_adapter", "get_peft_model", "inject_adapter",
        "load_state_dict", "safe_open", "load_file", "_load_pretrained_model", "prepare_gemma", "unload")
# The LM head and token choice of the local backend run outside any module's forward; they are
# the model's arithmetic all the same.
COMPUTE_FILES = ("torch/nn/modules/module.py", "torch/autograd/", "torch/optim/",
                 "services/generation/greedy_head.py", "services/generation/sampling.py")
KINDS = ("compute", "load/save", "database", "other")


def where(frame) -> str:
    """The innermost frame of this project's code: file:function."""
    while frame is not None:
        path = frame.f_code.co_filename
        if str(ROOT) in path and "/.venv/" not in path:
            return f"{Path(path).relative_to(ROOT)}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def classify(frame) -> str:
    kinds = set()
    while frame is not None:
        code = frame.f_code
        if code.co_name in LOAD:
            return "load/save"
        path = code.co_filename
        if any(p in path for p in COMPUTE_FILES):
            kinds.add("compute")
        elif "sqlalchemy" in path or "sqlite3" in path or "psycopg" in path:
            kinds.add("database")
        frame = frame.f_back
    return "compute" if "compute" in kinds else "database" if "database" in kinds else "other"


class Sampler(threading.Thread):
    """Samples thread `thread_id` every `every` seconds while `active` is set (from the start, unless
    `active=False`): counts by kind, the non-compute places, and (with `timeline`) each sample's
    wall-clock time and kind. Set `stop` to end the thread."""

    def __init__(self, thread_id: int, every: float = 0.005, timeline: bool = False, active: bool = True):
        super().__init__(daemon=True, name="autodidact-profile")
        self.target, self.every, self.timeline = thread_id, every, timeline
        self.counts, self.places = collections.Counter(), collections.Counter()
        self.samples: list[tuple[float, str]] = []
        self.stop, self.active = False, threading.Event()
        if active:
            self.active.set()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop:
            if self.active.wait(timeout=0.5):  # between tasks: asleep
                frame = sys._current_frames().get(self.target)
                if frame is not None:
                    kind = classify(frame)
                    with self.lock:
                        if self.active.is_set():
                            self.counts[kind] += 1
                            if kind != "compute":
                                self.places[f"{kind} in {where(frame)}"] += 1
                            if self.timeline:
                                self.samples.append((time.time(), kind))
                del frame
            time.sleep(self.every)

    def take(self) -> tuple[collections.Counter, collections.Counter, list]:
        """What was sampled since the last take (counts, places, samples), and start afresh."""
        with self.lock:
            out = (self.counts, self.places, self.samples)
            self.counts, self.places, self.samples = collections.Counter(), collections.Counter(), []
        return out


# ---------------------------------------------------------------- Celery workers
_sampler: Sampler | None = None
_pid: int | None = None  # the process whose thread _sampler watches (a forked child makes its own)
_started: dict[str, tuple[float, str]] = {}  # celery id -> (wall-clock start, task name)


def task_started(task_id: str, name: str) -> None:
    """Start sampling the calling thread (the one that runs the task)."""
    global _sampler, _pid
    if _sampler is None or _pid != os.getpid() or _sampler.target != threading.get_ident():
        if _sampler is not None and _pid == os.getpid():
            _sampler.stop = True
        _sampler, _pid = Sampler(threading.get_ident(), timeline=True, active=False), os.getpid()
        _sampler.start()
    _sampler.take()  # drop anything sampled between tasks
    _started[task_id] = (time.time(), name)
    _sampler.active.set()


def task_ended(task_id: str, directory: str | Path) -> None:
    """Stop sampling and append the task's record to `<directory>/<pid>.jsonl`."""
    end = time.time()
    if _sampler is None or task_id not in _started:
        return
    _sampler.active.clear()
    counts, places, samples = _sampler.take()
    start, name = _started.pop(task_id)
    record = {"pid": os.getpid(), "task": name, "start": start, "end": end, "counts": dict(counts),
              "places": dict(places), "samples": [(round(t, 4), KINDS.index(k)) for t, k in samples]}
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / f"{os.getpid()}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def connect_celery_signals(directory: str | Path) -> None:
    """Profile every task this process runs (bench/overhead.py; shared.queue calls it only when
    AUTODIDACT_PROFILE_DIR is set)."""
    from celery import signals

    @signals.task_prerun.connect(weak=False)
    def _prerun(task_id=None, task=None, **_) -> None:
        task_started(task_id, task.name)

    @signals.task_postrun.connect(weak=False)
    def _postrun(task_id=None, **_) -> None:
        task_ended(task_id, directory)


def read_records(directory: str | Path) -> list[dict]:
    """Every task record the workers wrote to `directory`."""
    records = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records
