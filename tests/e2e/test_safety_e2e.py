"""A round that makes the model worse is caught, through the API with real Celery workers on Redis
and Postgres and the tiny model: the training guard stops a runaway round with its reason stored,
and the round gate refuses to adopt a version whose held-out answers degrade (keep_previous), or
stops the run (stop). Held-out answers are scripted by tests/fakes.py for prompts marked DEGRADE:
the base answers well, any trained adapter writes a collapsed model's junk."""
from __future__ import annotations

from sqlmodel import select

from shared.db import session_scope
from shared.models import ModelVersion
from tests.e2e.helpers import upload, wait_finished
from tests.fakes import DEGRADE

TRAIN = [{"prompt": f"write about the river number {i}", "reference": f"the river {i} is long ."} for i in range(4)]
HELDOUT = [{"prompt": f"describe {DEGRADE} honey {i} without commas",
            "constraints": [{"id": "punctuation:no_comma", "kwargs": {}}]} for i in range(40)]
CONFIG = {"epochs": 2, "batch_size": 2, "max_new_tokens": 8, "learning_rate": 1e-3,
          "train": {"max_kl": 1e-6, "checkpoint_every": 0}}


def test_guard_and_gate_keep_a_degrading_round_out(api, workers, tiny_model):
    client, a, _ = api
    train = upload(client, a, TRAIN, name="safety-train")
    heldout = upload(client, a, HELDOUT, name="safety-heldout", split="heldout")
    r = client.post("/v1/runs", headers=a, json={
        "method": "spin", "base_model": tiny_model, "prompt_set_ids": [train], "eval_prompt_set_ids": [heldout],
        "rounds": 2, "config": CONFIG})
    assert r.status_code == 201, r.text
    run = wait_finished(client, a, r.json()["id"], workers)
    assert run["status"] == "succeeded", run["error"]
    r1, r2 = run["round_details"]
    # the guard: the first update already moved the policy past a 1e-6 KL ceiling
    stop = r1["metrics"]["train"].get("guard_stop")
    assert stop, r1["metrics"]["train"]
    assert stop["metric"] == "kl" and stop["ceiling"] == 1e-6 and 2 <= stop["step"] < 4  # of 4 planned
    # the gate: round 1's version writes junk and loses every held-out prompt, so it is not adopted
    gate = r1["metrics"]["gate"]
    assert gate["regressed"] and not gate["adopted"] and gate["on_regression"] == "keep_previous"
    assert any("fell by 1.000" in why for why in gate["reasons"])
    assert any("degenerate" in why for why in gate["reasons"])
    assert r1["metrics"]["eval"]["junk_rate"] == 1.0 and r1["metrics"]["eval_base"]["junk_rate"] == 0.0
    assert r1["metrics"]["eval"]["limit_rate"] == 1.0
    assert r2["policy_version_id"] == r1["policy_version_id"]  # round 2 starts again from the base
    assert r2["metrics"]["gate"]["compared_with_version"] == r1["policy_version_id"]
    with session_scope() as s:  # the start beat every round: none of the run's versions is promoted
        versions = s.exec(select(ModelVersion).where(ModelVersion.run_id == run["id"])).all()
        assert len(versions) == 2 and not any(v.promoted for v in versions)


def test_on_regression_stop_ends_the_run_and_says_why(api, workers, tiny_model):
    client, a, _ = api
    train = upload(client, a, TRAIN, name="safety-train-2")
    heldout = upload(client, a, HELDOUT, name="safety-heldout-2", split="heldout")
    r = client.post("/v1/runs", headers=a, json={
        "method": "spin", "base_model": tiny_model, "prompt_set_ids": [train], "eval_prompt_set_ids": [heldout],
        "rounds": 3, "config": {**CONFIG, "on_regression": "stop", "train": {"checkpoint_every": 0}}})
    assert r.status_code == 201, r.text
    run = wait_finished(client, a, r.json()["id"], workers)
    assert run["status"] == "stopped" and len(run["round_details"]) == 1
    assert run["error"].startswith("stopped after round 1: held-out prompt-level strict accuracy fell")
    bad = client.post("/v1/runs", headers=a, json={
        "method": "spin", "base_model": tiny_model, "prompt_set_ids": [train], "rounds": 1,
        "config": {"on_regression": "ignore"}})
    assert bad.status_code == 422 and "on_regression" in bad.text
