"""The TGI refresh hook shipped in infra/, end to end: infra/tgi-supervise.sh runs a fake TGI
process (as it runs text-generation-launcher in the container), the tgi backend's refresh command
is infra/tgi-refresh.sh, and a new adapter is served after the supervisor restarts the server
with the new LORA_ADAPTERS."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fake_tgi_main import info, start_supervised, stop_supervised

from services.generation.base import ModelRef, SamplingParams
from services.generation.servers import RetryPolicy
from services.generation.tgi import TGIBackend

ROOT = Path(__file__).resolve().parents[2]
HOOK = f"sh {ROOT / 'infra' / 'tgi-refresh.sh'} {{adapter_id}} {{adapter_path}}"
PROMPTS = [[{"role": "user", "content": "write a short poem about the sea"}]]


@pytest.fixture
def supervised_tgi(tmp_path, monkeypatch):
    listing = tmp_path / "tgi" / "lora_adapters"
    monkeypatch.setenv("TGI_ADAPTERS_FILE", str(listing))  # read by the hook the backend runs
    monkeypatch.setenv("TGI_MAX_ADAPTERS", "2")
    monkeypatch.setenv("TGI_REFRESH_WAIT", "30")
    url, proc = start_supervised(listing)
    yield url, listing
    stop_supervised(proc)


def test_the_shipped_hook_restarts_tgi_with_the_new_adapter(tiny_model, supervised_tgi, tmp_path):
    url, listing = supervised_tgi
    dirs = {k: tmp_path / f"v{k}" for k in (8, 9, 10)}
    for d in dirs.values():
        d.mkdir()
    tgi = TGIBackend([url], refresh_command=HOOK, poll_interval=0.1, refresh_timeout=30,
                     retry=RetryPolicy(retries=20, backoff=0.05, max_backoff=0.2, down_cooldown=0.2))
    assert info(url)["lora_adapters"] == []
    for k in (8, 9):
        out = tgi.generate(PROMPTS, ModelRef(tiny_model, str(dirs[k]), version_id=k), SamplingParams(max_new_tokens=4))
        assert len(out) == 1 and out[0][0].token_count > 0  # the server accepted adapter_id=v{k}
    assert info(url)["lora_adapters"] == ["v8", "v9"]
    assert listing.read_text().split() == [f"v8={dirs[8]}", f"v9={dirs[9]}"]
    # idempotent: asking again for a served adapter changes nothing and returns at once
    before = listing.stat().st_mtime_ns
    subprocess.run(HOOK.format(adapter_id="v9", adapter_path=str(dirs[9])), shell=True, check=True, timeout=10)
    assert listing.stat().st_mtime_ns == before
    # only the newest TGI_MAX_ADAPTERS stay: v10 retires v8
    tgi.generate(PROMPTS, ModelRef(tiny_model, str(dirs[10]), version_id=10), SamplingParams(max_new_tokens=4))
    assert info(url)["lora_adapters"] == ["v9", "v10"]


def test_the_hook_refuses_bad_input(tmp_path, monkeypatch):
    monkeypatch.setenv("TGI_ADAPTERS_FILE", str(tmp_path / "list"))
    run = lambda *a: subprocess.run(["sh", str(ROOT / "infra" / "tgi-refresh.sh"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=10)
    assert run("v1").returncode == 2
    missing = run("v1", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr
    assert run("v=1", str(tmp_path)).returncode == 2
