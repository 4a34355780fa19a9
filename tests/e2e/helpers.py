"""Helpers of the end-to-end tests: submit a run through the API and wait for it."""
from __future__ import annotations

from tests.conftest import wait_for


def submit(client, headers, **body) -> int:
    r = client.post("/v1/runs", headers=headers, json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


FINISHED = ("succeeded", "failed", "cancelled", "stopped")


def wait_finished(client, headers, run_id: int, workers, timeout: float = 420) -> dict:
    """The run once it has ended, whatever its status (the workers' logs are printed on a timeout)."""
    def finished():
        run = client.get(f"/v1/runs/{run_id}", headers=headers).json()
        return run if run["status"] in FINISHED else None

    try:
        return wait_for(finished, timeout=timeout, interval=1, what=f"run {run_id} to finish")
    except AssertionError:
        print(workers.logs())
        raise


def wait_run(client, headers, run_id: int, workers, timeout: float = 420) -> dict:
    """The run once it has ended, which must be in success."""
    run = wait_finished(client, headers, run_id, workers, timeout)
    assert run["status"] == "succeeded", (run["error"], workers.logs()[-6000:])
    return run


def stage_status(rnd: dict) -> dict:
    return {k: v["status"] for k, v in rnd["stages"].items()}


def upload(client, headers, items, name="set", split="train") -> int:
    r = client.post("/v1/prompt-sets", headers=headers, json={"name": name, "items": items, "split": split})
    assert r.status_code == 201, r.text
    return r.json()["id"]
