"""The fake TGI server as a process, started the way text-generation-launcher is: LORA_ADAPTERS
(name=path,...) in the environment, `--port`. `start_supervised` runs it as TGI_LAUNCHER under
the shipped infra/tgi-supervise.sh, which restarts it when the refresh hook (infra/tgi-refresh.sh)
changes the adapter list, to test the hook end to end. With FAKE_TGI_LOG set, the adapter_id of
every request served is appended to that file as a JSON line."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_tgi import FakeTGI  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class LoggingTGI(FakeTGI):
    def __init__(self, log: str | None, **kwargs):
        super().__init__(**kwargs)
        self.log = log

    def complete(self, inputs: str, p: dict) -> dict:
        out = super().complete(inputs, p)
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps({"adapter_id": p.get("adapter_id"), "served": self.adapters}) + "\n")
        return out


def info(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/info", timeout=1) as r:
            return json.loads(r.read())
    except OSError:
        return None


def start_supervised(listing: Path, request_log: Path | None = None, watch: float = 0.2,
                     timeout: float = 30) -> tuple[str, subprocess.Popen]:
    """infra/tgi-supervise.sh running this fake on a free port, reading the adapter list
    `listing`; returns (url, process) once it answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TGI_ADAPTERS_FILE": str(listing), "TGI_WATCH_SECONDS": str(watch),
           "TGI_LAUNCHER": f"{sys.executable} {Path(__file__).resolve()}"}
    if request_log is not None:
        env["FAKE_TGI_LOG"] = str(request_log)
    proc = subprocess.Popen(["sh", str(ROOT / "infra" / "tgi-supervise.sh"), "--port", str(port)], env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while info(url) is None:
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_supervised(proc)
            raise AssertionError("the supervised fake TGI did not start")
        time.sleep(0.1)
    return url, proc


def stop_supervised(proc: subprocess.Popen) -> None:
    """TERM the supervisor's process group; what has not exited after 20 s is killed, as a
    container runtime does after its stop timeout (a CI run once saw the fake server's graceful
    shutdown outlast 20 s under load, failing the test's teardown)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    adapters = [entry.split("=", 1)[0] for entry in os.environ.get("LORA_ADAPTERS", "").split(",") if entry]
    fake = LoggingTGI(os.environ.get("FAKE_TGI_LOG"), adapters=adapters)
    fake.port = port
    fake.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    fake.stop()


if __name__ == "__main__":
    main()
