"""The stack sampler of bench/overhead.py in a worker (shared/profiling.py): a task's record goes
to the profile directory only when AUTODIDACT_PROFILE_DIR is set."""
from __future__ import annotations

import os
import subprocess
import time
import sys
from pathlib import Path

import torch

from shared import profiling

ROOT = Path(__file__).resolve().parents[2]


def test_a_task_record_has_its_samples_by_kind(tmp_path):
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(256, 64)
    profiling.task_started("id-1", "generation.generate_shard")
    try:
        end = time.monotonic() + 0.3
        while time.monotonic() < end:
            layer(x)
    finally:
        profiling.task_ended("id-1", tmp_path)
        profiling._sampler.stop = True  # this process is no worker: no sampler thread left behind
    (record,) = profiling.read_records(tmp_path)
    assert record["task"] == "generation.generate_shard" and record["pid"] == os.getpid()
    assert record["start"] < record["end"]
    assert record["counts"].get("compute", 0) > 0, record["counts"]
    assert sum(record["counts"].values()) == len(record["samples"])
    assert all(record["start"] <= t <= record["end"] and 0 <= k < len(profiling.KINDS)
               for t, k in record["samples"])
    profiling.task_ended("id-1", tmp_path)  # a second end of the same task writes nothing
    assert len(profiling.read_records(tmp_path)) == 1


def _run_eager_task(tmp_path, profile_dir: str) -> None:
    """A Celery task applied in a fresh process (so the signals connect as in a worker)."""
    code = ("from shared.queue import celery_app\n"
            "def noop():\n"
            "    return None\n"
            "celery_app.task(name='conductor.noop')(noop).apply()\n")
    env = {k: v for k, v in os.environ.items() if k != "AUTODIDACT_PROFILE_DIR"}
    if profile_dir:
        env["AUTODIDACT_PROFILE_DIR"] = profile_dir
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def test_workers_write_records_only_when_the_variable_is_set(tmp_path):
    _run_eager_task(tmp_path, "")
    assert not list(tmp_path.rglob("*.jsonl"))
    _run_eager_task(tmp_path, str(tmp_path / "profile"))
    (record,) = profiling.read_records(tmp_path / "profile")
    assert record["task"] == "conductor.noop"
