"""A 2-round SPIN run through the API with real Celery workers on real Redis and Postgres, on a tiny
random model — including a generation worker killed mid-round and restarted."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlmodel import func, select

from shared.db import session_scope
from shared.models import ModelVersion, Round, Sample
from tests.conftest import wait_for
from tests.e2e.helpers import wait_run

N_PROMPTS, N_SAMPLES = 16, 2
WORDS = "apple banana cherry river mountain cloud seven green quick lazy dog fox sea poem".split()


def _items():
    items = []
    for i in range(N_PROMPTS):
        a, b = WORDS[i % len(WORDS)], WORDS[(i * 5 + 3) % len(WORDS)]
        items.append({"prompt": f"write about the {a} and the {b} ({i})",
                      "reference": f"the {a} and the {b} are friends ."})
    return items


def _sample_count(run_id: int, number: int) -> int:
    with session_scope() as s:
        rnd = s.exec(select(Round).where(Round.run_id == run_id, Round.number == number)).first()
        if rnd is None:
            return 0
        return s.exec(select(func.count()).select_from(Sample).where(Sample.round_id == rnd.id)).one()


def _adapter_digest(uri: str) -> str:
    files = sorted(Path(uri).glob("*.safetensors"))
    assert files, f"no adapter weights in {uri}"
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


def test_two_round_spin_with_a_killed_generation_worker(api, workers, tiny_model):
    client, a, _ = api
    ps = client.post("/v1/prompt-sets", json={"name": "e2e", "items": _items()}, headers=a).json()
    config = {"samples_per_prompt": N_SAMPLES, "max_new_tokens": 32, "learning_rate": 2e-3,
              "later_learning_rate": 2e-3, "epochs": 1, "batch_size": 8, "lora_r": 4, "lora_alpha": 8,
              "last_round_beta": None, "train": {"checkpoint_every": 2}}
    r = client.post("/v1/runs", headers=a, json={"method": "spin", "base_model": tiny_model,
                                                 "prompt_set_ids": [ps["id"]], "rounds": 2, "config": config})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    total = N_PROMPTS * N_SAMPLES

    # Kill the generation worker once part of round 1's samples are written, then restart it.
    partial = wait_for(lambda: 0 < _sample_count(run_id, 1) < total and _sample_count(run_id, 1),
                       timeout=120, interval=0.02, what="round 1 generation to start")
    workers.kill("generation")
    assert partial < total
    workers.start("generation")

    run = wait_run(client, a, run_id, workers)
    r1, r2 = run["round_details"]
    for rnd in (r1, r2):
        assert [rnd["stages"][s]["status"] for s in ("generate", "pairs", "train")] == ["succeeded"] * 3
        train = rnd["metrics"]["train"]
        for key in ("loss", "reward_margin", "reward_accuracy", "logp_margin_before", "logp_margin_after"):
            assert isinstance(train[key], float), (key, train)
        assert not any(k.endswith("_steps") for k in rnd["metrics"]), "per-step metrics have their own endpoint"
        steps = client.get(f"/v1/runs/{run_id}/rounds/{rnd['number']}/train-steps", headers=a).json()
        assert steps["round"] == rnd["number"] and steps["series"]["train_steps"], "per-step metrics are stored"
    # exactly one sample per (prompt, index) despite the kill and redelivery
    for number in (1, 2):
        assert _sample_count(run_id, number) == total
    with session_scope() as s:
        rounds = select(Round.id).where(Round.run_id == run_id)
        dup = s.exec(select(Sample.round_id, Sample.prompt_id, Sample.index, Sample.role, func.count())
                     .where(Sample.round_id.in_(rounds))
                     .group_by(Sample.round_id, Sample.prompt_id, Sample.index, Sample.role)
                     .having(func.count() > 1)).all()
        assert dup == []
        versions = s.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)
                          .order_by(ModelVersion.round_number)).all()
    # two distinct adapters, chained: round 2 sampled from round 1's version and trained from it
    assert [v.round_number for v in versions] == [1, 2]
    assert versions[1].parent_id == versions[0].id == r2["policy_version_id"]
    assert r1["produced_version_id"] == versions[0].id and r2["produced_version_id"] == versions[1].id
    assert _adapter_digest(versions[0].uri) != _adapter_digest(versions[1].uri)
    # models endpoint lists them; the pairs export is TRL-shaped JSONL
    listed = {m["id"] for m in client.get("/v1/models", headers=a).json()["items"]}
    assert {v.id for v in versions} <= listed
    lines = client.get(f"/v1/runs/{run_id}/pairs", headers=a).text.strip().splitlines()
    assert len(lines) == r1["metrics"]["pairs"] + r2["metrics"]["pairs"] > 0
    first = json.loads(lines[0])
    assert set(first) == {"prompt", "chosen", "rejected", "round", "source", "margin"}
    assert first["prompt"][-1]["role"] == "user" and first["chosen"][0]["role"] == "assistant"
    only_r2 = client.get(f"/v1/runs/{run_id}/pairs?round=2", headers=a).text.strip().splitlines()
    assert len(only_r2) == r2["metrics"]["pairs"]
