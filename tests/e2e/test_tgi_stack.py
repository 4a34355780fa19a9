"""Two SPIN rounds through the distributed stack on the `tgi` backend: real Celery workers and
beat, and the fake TGI (tests/service/fake_tgi.py) run by the shipped supervisor
infra/tgi-supervise.sh, with the shipped refresh hook infra/tgi-refresh.sh as the workers'
AUTODIDACT_TGI_REFRESH_COMMAND. Round 2 must be sampled with round 1's adapter, which only a
restart with the new LORA_ADAPTERS makes the server accept (it refuses unknown adapter ids)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from sqlmodel import select

from shared.db import session_scope
from shared.models import ModelVersion
from tests.e2e.helpers import submit, upload, wait_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from fake_tgi_main import info, start_supervised, stop_supervised  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tgi(workers, tmp_path):
    listing, log = tmp_path / "tgi" / "lora_adapters", tmp_path / "requests.jsonl"
    url, proc = start_supervised(listing, request_log=log)
    names = ("AUTODIDACT_GENERATION_BACKEND", "AUTODIDACT_TGI_URLS", "AUTODIDACT_TGI_REFRESH_COMMAND",
             "TGI_ADAPTERS_FILE", "TGI_REFRESH_WAIT")
    before = {k: workers.env.get(k, "") for k in names}
    workers.restart_all(AUTODIDACT_GENERATION_BACKEND="tests.fakes:scripted_tgi", AUTODIDACT_TGI_URLS=url,
                        AUTODIDACT_TGI_REFRESH_COMMAND=f"sh {ROOT / 'infra' / 'tgi-refresh.sh'} {{adapter_id}} {{adapter_path}}",
                        TGI_ADAPTERS_FILE=str(listing), TGI_REFRESH_WAIT="60")
    yield url, log
    workers.restart_all(**before)
    stop_supervised(proc)


def test_spin_two_rounds_on_tgi_through_the_refresh_hook(api, tgi, tiny_model, workers):
    url, log = tgi
    client, a, _ = api
    n = 6
    ps = upload(client, a, [{"prompt": f"describe the hill {i}", "reference": f"the hill {i} is green ."}
                            for i in range(n)], name="tgi-spin")
    run_id = submit(client, a, method="spin", base_model=tiny_model, prompt_set_ids=[ps], rounds=2,
                    config={"samples_per_prompt": 2, "max_new_tokens": 12, "later_learning_rate": 2e-3,
                            "last_round_beta": None, "learning_rate": 2e-3, "epochs": 1, "batch_size": 8,
                            "lora_r": 4, "lora_alpha": 8})
    run = wait_run(client, a, run_id, workers)
    r1, r2 = run["round_details"]
    with session_scope() as s:
        v1 = s.get(ModelVersion, r1["produced_version_id"])
        assert len(s.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)).all()) == 2
    assert r2["policy_version_id"] == v1.id
    served = [json.loads(line) for line in log.read_text().splitlines()]
    # TGI has no n: each prompt's samples are separate requests; round 1 from the base, then
    # round 2 from round 1's adapter, served by the restarted server (a resent shard may ask again)
    ids = [x["adapter_id"] for x in served]
    first = ids.index(f"v{v1.id}")
    assert set(ids[:first]) == {None} and len(ids[:first]) >= n * 2, ids
    assert set(ids[first:]) == {f"v{v1.id}"} and len(ids) - first >= n * 2, ids
    assert all(f"v{v1.id}" in x["served"] for x in served[first:])
    assert info(url)["lora_adapters"] == [f"v{v1.id}"]
