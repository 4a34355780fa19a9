"""The fake TGI server as a process, started the way text-generation-launcher is: LORA_ADAPTERS
(name=path,...) in the environment, `--port`. Used as TGI_LAUNCHER under infra/tgi-supervise.sh
to test the shipped refresh hook end to end."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_tgi import FakeTGI  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    adapters = [entry.split("=", 1)[0] for entry in os.environ.get("LORA_ADAPTERS", "").split(",") if entry]
    fake = FakeTGI(adapters=adapters)
    fake.port = port
    fake.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    fake.stop()


if __name__ == "__main__":
    main()
