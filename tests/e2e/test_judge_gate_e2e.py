"""Judge gating through the API with real Celery workers: a self-judged round measures its judge on
a probe of training prompts first; below the floor the run stops with the numbers, or (the
default) the round is judged by the verifier instead. The refiner is first bootstrapped from
verifier-labelled samples. Judgments of prompts marked MUTE are unparseable (tests/fakes.py)."""
from __future__ import annotations

from sqlmodel import select

from shared.db import session_scope
from shared.models import Judgment, Round, Sample
from tests.e2e.helpers import stage_status, upload, wait_finished
from tests.fakes import MUTE

NO_COMMA = [{"id": "punctuation:no_comma", "kwargs": {}}]
PROMPTS = [{"prompt": f"write about {MUTE} stone {i} without commas", "constraints": NO_COMMA} for i in range(8)]
CONFIG = {"samples_per_prompt": 2, "max_new_tokens": 10, "judge_votes": 3, "branching": 2, "keep": 1,
          "max_depth": 1, "search_budget": 2, "learning_rate": 1e-3, "epochs": 1, "batch_size": 8, "lora_r": 4,
          "lora_alpha": 8, "judge_check_prompts": 3, "bootstrap_judge_epochs": 1, "train": {"checkpoint_every": 0}}


def _run(client, headers, workers, **config):
    train = upload(client, headers, PROMPTS, name=f"gate-{config.get('on_weak_judge', 'default')}")
    r = client.post("/v1/runs", headers=headers, json={"method": "spar", "base_model": workers.tiny_model,
                                                       "prompt_set_ids": [train], "rounds": 1,
                                                       "config": {**CONFIG, **config}})
    assert r.status_code == 201, r.text
    return wait_finished(client, headers, r.json()["id"], workers)


def test_a_judge_below_the_floor_stops_the_run_with_the_numbers(api, workers, tiny_model):
    client, a, _ = api
    workers.tiny_model = tiny_model
    run = _run(client, a, workers, on_weak_judge="stop")
    assert run["status"] == "failed"
    assert "judge_check" in run["error"] and "the refiner judge is below its floor" in run["error"]
    assert "parseable 0.00 < 0.90" in run["error"]
    check = run["round_details"][0]["metrics"]["judge_check"]
    assert check["passed"] is False and check["probe_prompts"] == 3 and check["action"] == "stop"


def test_a_weak_judge_hands_the_round_to_the_verifier(api, workers, tiny_model):
    client, a, _ = api
    workers.tiny_model = tiny_model
    run = _run(client, a, workers)
    assert run["status"] == "succeeded", run["error"]
    rnd = run["round_details"][0]
    status = stage_status(rnd)
    assert status["bootstrap_judge"] in ("succeeded",) and status["judge_check"] == "succeeded"
    boot = rnd["metrics"]["bootstrap_judge"]  # the refiner's bootstrap data came from 5 prompts x 2 samples
    assert boot["labelled_samples"] == 10
    check = rnd["metrics"]["judge_check"]
    assert check["action"] == "verifier" and check["parseable"] == 0.0
    with session_scope() as s:  # every judgment of the round was written by the verifier
        row = s.exec(select(Round).where(Round.run_id == run["id"])).one()
        votes = s.exec(select(Judgment).join(Sample).where(Sample.round_id == row.id,
                                                           Judgment.kind == "refiner")).all()
        assert len(votes) == 16 and all(v.rationale.startswith("Checks of the instructions in the request:") for v in votes)
        assert all(v.passed == ("," not in s.get(Sample, v.sample_id).text) for v in votes)


def test_a_judge_prompt_set_teaches_the_judge_of_a_run_without_constraints(api, workers, tiny_model):
    """The run's own prompts have no constraints, so only the judge set can teach and probe the
    refiner: round 1 samples the set's bootstrap prompts (role "bootstrap"), trains the refiner on
    them and probes it on the set's last prompts; the actor never trains on the set."""
    client, a, _ = api
    workers.tiny_model = tiny_model
    train = upload(client, a, [{"prompt": f"tell a story about stone {i}"} for i in range(4)], name="plain")
    judge_set = upload(client, a, PROMPTS, name="judge-set")
    r = client.post("/v1/runs", headers=a, json={"method": "spar", "base_model": tiny_model,
                                                 "prompt_set_ids": [train], "rounds": 1,
                                                 "config": {**CONFIG, "judge_prompt_set_ids": [judge_set]}})
    assert r.status_code == 201, r.text
    run = wait_finished(client, a, r.json()["id"], workers)
    assert run["status"] == "succeeded", run["error"]
    rnd = run["round_details"][0]
    status = stage_status(rnd)
    assert status["bootstrap_samples"] == "succeeded" and status["bootstrap_judge"] == "succeeded"
    assert rnd["metrics"]["bootstrap_judge"]["labelled_samples"] == 10  # 5 bootstrap prompts x 2 samples
    assert rnd["metrics"]["judge_check"]["probe_prompts"] == 3
    with session_scope() as s:
        row = s.exec(select(Round).where(Round.run_id == run["id"])).one()
        samples = s.exec(select(Sample).where(Sample.round_id == row.id)).all()
        judge_ids = {x.prompt_id for x in samples if x.role == "bootstrap"}
        policy_ids = {x.prompt_id for x in samples if x.role == "policy"}
        assert len(judge_ids) == 5 and not judge_ids & policy_ids and len(policy_ids) == 4
