"""Helpers of the end-to-end tests: submit a run through the API and wait for it."""
from __future__ import annotations

from tests.conftest import wait_for


def submit(client, headers, **body) -> int:
    r = client.post("/v1/runs", headers=headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def wait_run(client, headers, run_id: int, workers, timeout: float = 420) -> dict:
    def finished():
        run = client.get(f"/v1/runs/{run_id}", headers=headers).json()
        return run if run["status"] in ("succeeded", "failed", "cancelled") else None

    try:
        run = wait_for(finished, timeout=timeout, interval=1, what=f"run {run_id} to finish")
    except AssertionError:
        print(workers.logs())
        raise
    assert run["status"] == "succeeded", (run["error"], workers.logs()[-6000:])
    return run


def stage_status(rnd: dict) -> dict:
    return {k: v["status"] for k, v in rnd["stages"].items()}


def upload(client, headers, items, name="set", split="train") -> int:
    r = client.post("/v1/prompt-sets", headers=headers, json={"name": name, "items": items, "split": split})
    assert r.status_code == 201, r.text
    return r.json()["id"]
