"""The gateway on a real Postgres: auth, workspace isolation, validation errors, nothing half-stored."""
from __future__ import annotations

import io
import json

import pytest


ITEMS = [{"prompt": "Say hi.", "reference": "Hi!"},
         {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count to 3."}],
          "reference": "1, 2, 3."}]


def _create_set(client, headers, items=ITEMS, name="greetings"):
    r = client.post("/v1/prompt-sets", json={"name": name, "items": items}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_healthz_needs_no_key_and_checks_db_and_broker(api):
    client, _, _ = api
    r = client.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok", "database": "ok", "broker": "ok"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}])
def test_endpoints_require_a_valid_bearer_key(api, headers):
    client, _, _ = api
    for path in ("/v1/prompt-sets", "/v1/runs", "/v1/models"):
        assert client.get(path, headers=headers).status_code == 401


def test_keys_are_stored_hashed(api):
    from sqlmodel import select

    from shared.db import session_scope
    from shared.models import ApiKey

    _, a, _ = api
    plain = a["Authorization"].split()[1]
    with session_scope() as s:
        stored = [k.key_hash for k in s.exec(select(ApiKey))]
    assert plain not in stored and all(len(h) == 64 for h in stored)


def test_prompt_set_roundtrip_and_paging(api):
    client, a, _ = api
    ps = _create_set(client, a)
    assert ps["size"] == 2
    page = client.get(f"/v1/prompt-sets/{ps['id']}/prompts?offset=1&limit=1", headers=a).json()
    assert page["total"] == 2 and len(page["items"]) == 1
    assert page["items"][0]["messages"][-1] == {"role": "user", "content": "Count to 3."}
    assert any(s["id"] == ps["id"] for s in client.get("/v1/prompt-sets", headers=a).json()["items"])


def test_export_round_trips_through_upload(api):
    client, a, b = api
    items = ITEMS + [{"prompt": "Lowercase please.", "constraints": [{"id": "change_case:english_lowercase", "kwargs": {}}],
                      "topic": "style"}]
    ps = _create_set(client, a, items=items)
    exported = client.get(f"/v1/prompt-sets/{ps['id']}/export", headers=a)
    assert exported.status_code == 200
    assert [json.loads(line) for line in exported.text.splitlines()] == items
    again = client.post("/v1/prompt-sets", headers=a, data={"name": "again"},
                        files={"file": ("p.jsonl", io.BytesIO(exported.content), "application/jsonl")})
    assert again.status_code == 201 and again.json()["size"] == 3
    assert client.get(f"/v1/prompt-sets/{ps['id']}/export", headers=b).status_code == 404


def test_other_workspace_ids_answer_404(api):
    client, a, b = api
    ps = _create_set(client, a)
    assert client.get(f"/v1/prompt-sets/{ps['id']}", headers=b).status_code == 404
    assert client.get(f"/v1/prompt-sets/{ps['id']}/prompts", headers=b).status_code == 404
    assert all(s["id"] != ps["id"] for s in client.get("/v1/prompt-sets", headers=b).json()["items"])
    r = client.post("/v1/runs", headers=b, json={"method": "spin", "base_model": "gemma",
                                                 "prompt_set_ids": [ps["id"]]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["prompt_set_ids", 0]


def test_invalid_json_items_are_refused_whole_with_field_names(api):
    client, a, _ = api
    before = len(client.get("/v1/prompt-sets", headers=a).json()["items"])
    bad = ITEMS + [{"prompt": ""}, {"reference": "no prompt"}, {"prompt": "x", "constraints": [{"kwargs": {}}]}]
    r = client.post("/v1/prompt-sets", json={"name": "bad", "items": bad}, headers=a)
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["items", 2, "prompt"] in locs and ["items", 3, "prompt"] in locs
    assert ["items", 4, "constraints", 0] in locs
    assert len(client.get("/v1/prompt-sets", headers=a).json()["items"]) == before  # nothing stored


def test_jsonl_upload_and_line_numbered_errors(api):
    client, a, _ = api
    good = "\n".join(json.dumps(i) for i in ITEMS) + "\n"
    r = client.post("/v1/prompt-sets", headers=a, data={"name": "upload"},
                    files={"file": ("p.jsonl", io.BytesIO(good.encode()), "application/jsonl")})
    assert r.status_code == 201 and r.json()["size"] == 2
    bad = good + "{not json}\n" + json.dumps({"prompt": 5}) + "\n"
    r = client.post("/v1/prompt-sets", headers=a, data={"name": "upload"},
                    files={"file": ("p.jsonl", io.BytesIO(bad.encode()), "application/jsonl")})
    assert r.status_code == 422
    locs = [e["loc"] for e in r.json()["detail"]]
    assert ["file", "line 3"] in locs and ["file", "line 4", "prompt"] in locs


@pytest.mark.parametrize("body,loc", [
    ({"method": "nope"}, ["method"]),
    ({"config": {"betta": 0.1}}, ["config", "betta"]),
    ({"config": {"beta": -1}}, ["config", "beta"]),
    ({"config": {"train": {"schedule": "zigzag"}}}, ["config", "train"]),
    ({"rounds": 0}, ["rounds"]),
    ({"base_model": "/does/not/exist"}, ["base_model"]),
    ({"stopping": {"forever": True}}, ["stopping", "forever"]),
    ({"continuous": True, "stopping": {"max_rounds": "abc"}}, ["stopping", "max_rounds"]),
    ({"stopping": {"patience": -1}}, ["stopping", "patience"]),
    ({"stopping": {"delta": True}}, ["stopping", "delta"]),
    ({"config": {"train": {"lora": False}}}, ["config", "train"]),
    ({"prompt_set_ids": [True]}, ["prompt_set_ids", 0]),
    ({"prompt_set_ids": [2**70]}, ["prompt_set_ids", 0]),
    ({"method": "self_reward", "config": {"eft_prompt_set_ids": [{"a": 1}]}}, ["config", "eft_prompt_set_ids"]),
    ({"method": "self_reward", "config": {"judge_version_id": [1]}}, ["config", "judge_version_id"]),
])
def test_run_config_errors_name_the_field(api, body, loc):
    client, a, _ = api
    ps = _create_set(client, a)
    payload = {"method": "spin", "base_model": "gemma", "prompt_set_ids": [ps["id"]], **body}
    r = client.post("/v1/runs", json=payload, headers=a)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]], r.json()


def test_spin_refuses_prompts_without_reference(api):
    client, a, _ = api
    ps = _create_set(client, a, items=[{"prompt": "no gold"}])
    r = client.post("/v1/runs", headers=a, json={"method": "spin", "base_model": "gemma",
                                                 "prompt_set_ids": [ps["id"]]})
    assert r.status_code == 422 and "reference" in r.json()["detail"][0]["msg"]


def test_judge_prompt_sets_are_checked(api):
    client, a, _ = api
    train = _create_set(client, a)["id"]
    plain = _create_set(client, a, name="plain")["id"]
    lower = [{"prompt": "Lowercase.", "reference": "ok.", "constraints": [{"id": "change_case:english_lowercase",
                                                                          "kwargs": {}}]}]
    verifiable = _create_set(client, a, items=lower, name="verifiable")["id"]
    held = _create_set(client, a, items=lower, name="held")["id"]

    def post(judge_sets, eval_sets=()):
        return client.post("/v1/runs", headers=a, json={
            "method": "spar", "base_model": "gemma", "prompt_set_ids": [train], "eval_prompt_set_ids": list(eval_sets),
            "config": {"judge_prompt_set_ids": judge_sets}})

    for judge_sets, eval_sets, words in [([99999999], [], "99999999"), ([plain], [], "none of these prompt sets has a prompt with constraints"),
                                         ([held], [held], "held-out sets of this run")]:
        r = post(judge_sets, eval_sets)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail[0]["loc"][:2] == ["config", "judge_prompt_set_ids"] and words in str(detail), detail
    assert post([verifiable], [held]).status_code == 201


def test_held_out_sets_cannot_be_trained_on(api):
    client, a, _ = api
    ps = _create_set(client, a, items=ITEMS + [{"prompt": "Lowercase.", "reference": "ok.",
                                                "constraints": [{"id": "change_case:english_lowercase", "kwargs": {}}]}])
    r = client.post("/v1/runs", headers=a, json={"method": "spin", "base_model": "gemma", "prompt_set_ids": [ps["id"]],
                                                 "eval_prompt_set_ids": [ps["id"]]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["eval_prompt_set_ids"]


@pytest.mark.parametrize("method,path", [
    ("get", "/v1/runs/99999999999999999999"), ("get", "/v1/models/99999999999999999999"),
    ("get", "/v1/prompt-sets/1/prompts?offset=99999999999999999999"), ("post", "/v1/runs/99999999999999999999/cancel"),
])
def test_out_of_range_numbers_are_4xx_not_500(api, method, path):
    client, a, _ = api
    assert 400 <= getattr(client, method)(path, headers=a).status_code < 500


def test_unknown_ids_are_404(api):
    client, a, _ = api
    for path in ("/v1/runs/999999", "/v1/models/999999", "/v1/prompt-sets/999999", "/v1/runs/999999/pairs"):
        assert client.get(path, headers=a).status_code == 404
    assert client.post("/v1/runs/999999/cancel", headers=a).status_code == 404
