"""Private Redis and Postgres servers for the fault tests, on free ports under a temp directory:
the tests stop and restart them, which must never touch the shared servers other tests (and
other people) use. Postgres runs as the `postgres` user when the tests run as root (it refuses
to run as root)."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not come up in {timeout}s")
        time.sleep(0.1)


class PrivateRedis:
    """redis-server without persistence: a restart loses every queued and unacked message."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")])
        _wait(self._ping, 20, "private redis")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # a crash: nothing is saved
            self.proc.wait(timeout=10)
            self.proc = None


class PrivatePostgres:
    """A throw-away cluster (initdb) with trust auth on a free port, in its own temp directory
    (pytest's is private to the user running the tests, so the postgres user could not enter it)."""

    def __init__(self):
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="autodidact-pg-"))
        self.dir = self.root / "pgdata"
        self.socket_dir = self.root / "sock"
        self.log = self.root / "postgres.log"
        self._as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        for d in (self.dir, self.socket_dir):
            d.mkdir()
        self.log.touch()
        if self._as_postgres:
            for path in (self.root, self.dir, self.socket_dir, self.log):
                shutil.chown(path, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, *argv: str, check: bool = True) -> None:
        done = subprocess.run([*self._as_postgres, *argv], capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.dir), "-o", options, "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "immediate") -> None:
        """`immediate`: like a crash (no checkpoint; crash recovery on the next start)."""
        self._run("pg_ctl", "-D", str(self.dir), "-m", mode, "-w", "stop", check=False)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
