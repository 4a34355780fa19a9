"""Two rounds through the distributed stack on the `openai` backend: the API, real Celery workers
and beat on Redis and Postgres, and an OpenAI-compatible server backed by the tiny model that
loads adapters at run time the way vLLM does (tests/service/fake_openai.py). Round 2 must be
sampled from round 1's adapter, loaded by the workers through /v1/load_lora_adapter. Judge and
refiner prompts are scripted in the workers (tests/fakes.py); the policy's answers are generated
by the server."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sqlmodel import select

from shared.db import session_scope
from shared.models import ModelVersion, Round, Sample
from tests.e2e.helpers import submit, upload, wait_run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))
from fake_openai import ModelOpenAI  # noqa: E402

TRAIN = {"learning_rate": 2e-3, "epochs": 1, "batch_size": 8, "lora_r": 4, "lora_alpha": 8}


@pytest.fixture
def vllm_like(workers, tiny_model):
    server = ModelOpenAI(tiny_model).start()
    before = {k: workers.env.get(k, "") for k in ("AUTODIDACT_GENERATION_BACKEND", "AUTODIDACT_OPENAI_BASE_URL")}
    workers.restart_all(AUTODIDACT_GENERATION_BACKEND="tests.fakes:scripted_openai",
                        AUTODIDACT_OPENAI_BASE_URL=server.url)
    yield server
    workers.restart_all(**before)
    server.stop()


def _policy_samples(run_id: int, number: int) -> list[Sample]:
    with session_scope() as s:
        rnd = s.exec(select(Round).where(Round.run_id == run_id, Round.number == number)).one()
        return s.exec(select(Sample).where(Sample.round_id == rnd.id, Sample.role == "policy")).all()


def _check_rounds_came_from_the_server(run: dict, server: ModelOpenAI, n_prompts: int) -> None:
    r1, r2 = run["round_details"]
    with session_scope() as s:
        v1 = s.get(ModelVersion, r1["produced_version_id"])
    assert r2["policy_version_id"] == v1.id and v1.kind == "adapter"
    # round 1 from the base, then round 2 from round 1's adapter, which the workers loaded at run
    # time from its directory in the artifact store; at least one request per prompt and round
    # (a shard resent after a slow heartbeat asks again: its rows are kept once, checked below)
    names = [name for name, _ in server.served]
    first_v1 = names.index(f"v{v1.id}")
    assert set(names[:first_v1]) == {"tiny-base"} and len(names[:first_v1]) >= n_prompts, server.served
    assert set(server.served[first_v1:]) == {(f"v{v1.id}", v1.uri)} and len(names) - first_v1 >= n_prompts
    assert server.posts("/v1/load_lora_adapter") == [{"lora_name": f"v{v1.id}", "lora_path": v1.uri}]
    for number, version in ((1, r1["policy_version_id"]), (2, v1.id)):
        samples = _policy_samples(run["id"], number)
        assert samples and {x.generator_version_id for x in samples} == {version}


def test_spin_two_rounds_on_the_openai_backend(api, vllm_like, tiny_model, workers):
    client, a, _ = api
    n = 6
    ps = upload(client, a, [{"prompt": f"describe the river {i}", "reference": f"the river {i} is wide ."}
                            for i in range(n)], name="oa-spin")
    run_id = submit(client, a, method="spin", base_model=tiny_model, prompt_set_ids=[ps], rounds=2,
                    config={"samples_per_prompt": 2, "max_new_tokens": 12, "later_learning_rate": 2e-3,
                            "last_round_beta": None, **TRAIN})
    run = wait_run(client, a, run_id, workers)
    _check_rounds_came_from_the_server(run, vllm_like, n)


def test_spar_two_rounds_on_the_openai_backend(api, vllm_like, tiny_model, workers):
    client, a, _ = api
    n = 5
    no_comma = [{"id": "punctuation:no_comma", "kwargs": {}}]
    ps = upload(client, a, [{"prompt": f"write about the stone {i}", "constraints": no_comma} for i in range(n)],
                name="oa-spar")
    run_id = submit(client, a, method="spar", base_model=tiny_model, prompt_set_ids=[ps], rounds=2,
                    config={"samples_per_prompt": 3, "max_new_tokens": 10, "judge_votes": 3, "branching": 2,
                            "keep": 1, "max_depth": 2, "search_budget": 4, "bootstrap_judge": False,
                            "judge_check_prompts": 0, **TRAIN})
    run = wait_run(client, a, run_id, workers)
    _check_rounds_came_from_the_server(run, vllm_like, n)
