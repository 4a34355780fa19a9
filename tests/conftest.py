"""Shared fixtures. Service tests run against the real Postgres and Redis of the machine (they fail,
never skip, when those are down: `.ci/run` starts them); Celery workers are real subprocesses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest_plugins = ["tests.gateway_process"]  # the live_gateway fixture (a real gateway process)

# Settings are read from the environment; fix them before any project module builds an engine
# or the Celery app. Redis DB 15 keeps test queues apart from anything else on the server.
PG_ADMIN = os.environ.get("AUTODIDACT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("AUTODIDACT_TEST_REDIS", "redis://127.0.0.1:6379/15")
os.environ["AUTODIDACT_REDIS_URL"] = REDIS_URL
# Recovery from a dead worker must come from heartbeats and the sweep (seconds), not from Redis
# redelivering an unacked message after the visibility timeout (hours by default): keep it long.
os.environ.setdefault("AUTODIDACT_VISIBILITY_TIMEOUT", "3600")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP threads spin
    waiting for each other (a tiny-model test went from 2 s to 56 s); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_settings(monkeypatch):
    """For tests that set AUTODIDACT_* variables with monkeypatch: the settings are read again
    after the test sets them, and again after monkeypatch restored them."""
    from shared.config import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    from shared.tinymodel import build_tiny_model

    # Under the test model root (see services_env): the API takes base models only from there.
    return str(build_tiny_model(model_root(tmp_path_factory) / "tiny"))


def model_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "models"
    root.mkdir(exist_ok=True)
    return root


@contextmanager
def fresh_database(prefix: str = "autodidact_test"):
    """A new Postgres database with the migrations applied (its URL), dropped afterwards."""
    import psycopg

    from shared.db import _engine_for
    from shared.migrate import upgrade

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    try:
        yield url
    finally:
        _engine_for(url).dispose()  # this process's pooled connections to it
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url():
    """The session's Postgres database (see `fresh_database`), shared with the worker processes."""
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_client():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    client.ping()  # fails loudly when Redis is down
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def services_env(pg_url, redis_client, tmp_path_factory):
    """Point this process (and the workers it starts) at the test Postgres, Redis and artifacts."""
    from shared.config import get_settings

    env = {
        "AUTODIDACT_DATABASE_URL": pg_url,
        "AUTODIDACT_REDIS_URL": REDIS_URL,
        "AUTODIDACT_EXECUTION": "celery",
        "AUTODIDACT_ARTIFACT_DIR": str(tmp_path_factory.mktemp("artifacts")),
        "AUTODIDACT_GENERATION_SHARD_SIZE": "4",
        "AUTODIDACT_GENERATION_BATCH_SIZE": "2",
        # Policy requests go to the real local backend; judge / refine / self-instruct requests get
        # scripted answers (a tiny random model cannot judge): see tests/fakes.py.
        "AUTODIDACT_GENERATION_BACKEND": "tests.fakes:scripted_backend",
        # Five worker processes share two cores: one torch thread each, or they spin-wait.
        "AUTODIDACT_TORCH_THREADS": "1",
        "AUTODIDACT_MODEL_ROOTS": str(model_root(tmp_path_factory)),
        # Beat sweeps every 2 s; a running task whose worker stopped beating for 8 s is resent.
        "AUTODIDACT_SWEEP_INTERVAL_SECONDS": "2",
        "AUTODIDACT_HEARTBEAT_SECONDS": "1",
        "AUTODIDACT_HEARTBEAT_TIMEOUT": "8",
    }
    os.environ.update(env)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


def _key(workspace: str, role: str = "admin") -> str:
    from shared import crud
    from shared.db import session_scope

    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=workspace)
        plain, _ = crud.create_api_key(s, workspace_id=ws.id, role=role)
    return plain


def api_client() -> tuple:
    """(TestClient, headers of workspace A, headers of workspace B) on the database the settings name."""
    from fastapi.testclient import TestClient

    from services.gateway.main import create_app

    client = TestClient(create_app())
    a = {"Authorization": f"Bearer {_key('ws-a')}"}
    b = {"Authorization": f"Bearer {_key('ws-b')}"}
    return client, a, b


@pytest.fixture(scope="session")
def api(services_env):
    """`api_client` on the session database."""
    return api_client()


class Workers:
    """Real `autodidact worker` subprocesses, one per queue, and `autodidact beat` (name "beat");
    can kill and restart any of them."""

    def __init__(self, env: dict, log_dir: Path):
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.argv: dict[str, list[str]] = {}  # what each name was started with, for restarts

    def start(self, queue: str, argv: list[str] | None = None) -> None:
        """Start the worker of `queue`, beat ("beat"), or any `autodidact` command (`argv`)."""
        log = open(self.log_dir / f"{queue}-{time.time():.0f}.log", "w")
        if argv is None and queue in self.argv:
            argv = self.argv[queue]
        elif argv is None and queue == "beat":
            argv = ["beat", "--loglevel", "INFO", "--schedule", str(self.log_dir / "beat-schedule")]
        elif argv is None:
            argv = ["worker", "--queue", queue, "--loglevel", "INFO"]
        self.argv[queue] = argv
        self.procs[queue] = subprocess.Popen(
            [sys.executable, "-m", "services.cli", *argv],
            env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def pid(self, queue: str) -> int:
        return self.procs[queue].pid

    def kill(self, queue: str) -> None:
        proc = self.procs.pop(queue)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def restart_all(self, **env: str) -> None:
        """Stop every process, change their environment (e.g. another generation backend), and
        start them again."""
        names = list(self.procs)
        self.stop_all()
        self.env.update(env)
        for name in names:
            self.start(name)

    def stop_all(self) -> None:
        for queue in list(self.procs):
            proc = self.procs.pop(queue)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log")))


@pytest.fixture(scope="session")
def workers(services_env, tmp_path_factory):
    w = Workers(services_env, tmp_path_factory.mktemp("worker-logs"))
    for q in ("conductor", "generation", "judging", "refinement", "training", "beat"):
        w.start(q)
    yield w
    w.stop_all()


def wait_for(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
