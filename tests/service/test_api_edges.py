"""Each finding of the API probe (issue 12), as the status code and message it gets now: bad text,
non-numbers, bounds, strictness, body size, ids out of range, base models from declared places."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

ITEMS = [{"prompt": "Say hi.", "reference": "Hi!"}]
NUL, LONE = "\u0000", "\ud800"


def _set(client, headers, items=ITEMS, name="edges") -> int:
    r = client.post("/v1/prompt-sets", json={"name": name, "items": items}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _raw(client, path, headers, payload: str):
    """POST a JSON text as is (json.dumps escapes lone surrogates and NUL as \\u sequences)."""
    return client.post(path, content=payload.encode(), headers={**headers, "content-type": "application/json"})


def _run(client, a, **over):
    return {"method": "spin", "base_model": "gemma", "prompt_set_ids": [_set(client, a)], **over}


def _only(r, status: int, loc: list, words: str):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"detail"} and all(set(e) == {"loc", "msg", "type"} for e in body["detail"]), body
    hit = [e for e in body["detail"] if e["loc"] == loc]
    assert hit and words in hit[0]["msg"], body
    assert "out of range" not in r.text  # the old catch-all message
    return hit[0]


# ---------------------------------------------------------------- the five 500s
@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_numbers_name_the_field(api, value):
    client, a, _ = api
    payload = json.dumps(_run(client, a))[:-1] + f', "rounds": {value}}}'
    word = "too large" if value == "1e400" else "not a JSON number"
    _only(_raw(client, "/v1/runs", a, payload), 422, ["rounds"], word)


def test_nul_in_base_model_is_422(api):
    client, a, _ = api
    _only(client.post("/v1/runs", json=_run(client, a, base_model="gem" + NUL + "ma"), headers=a),
          422, ["base_model"], "NUL")


def test_very_long_base_model_is_422_without_echo(api):
    client, a, _ = api
    r = client.post("/v1/runs", json=_run(client, a, base_model="m" * 100_000), headers=a)
    _only(r, 422, ["base_model"], "at most 256 characters")
    assert len(r.content) < 2000


@pytest.mark.parametrize("field", ["name", "description"])
def test_lone_surrogate_in_set_fields_is_422(api, field):
    client, a, _ = api
    body = {"name": "ok", "items": ITEMS, field: "bad " + LONE}
    _only(_raw(client, "/v1/prompt-sets", a, json.dumps(body)), 422, [field], "unpaired surrogate")


@pytest.mark.parametrize("field", ["prompt", "reference", "topic", "answer"])
@pytest.mark.parametrize("char,word", [(LONE, "unpaired surrogate"), (NUL, "NUL")])
def test_unreadable_text_in_items_is_422_and_nothing_is_stored(api, field, char, word):
    client, a, _ = api
    before = client.get("/v1/prompt-sets?limit=1", headers=a).json()["items"]
    item = {"prompt": "fine", field: "x" + char + "y"}
    _only(_raw(client, "/v1/prompt-sets", a, json.dumps({"name": "bad", "items": [item]})), 422,
          ["items", 0, field], word)
    jsonl = (json.dumps(item) + "\n").encode()
    r = client.post("/v1/prompt-sets", headers=a, data={"name": "bad"},
                    files={"file": ("p.jsonl", io.BytesIO(jsonl), "application/jsonl")})
    _only(r, 422, ["file", "line 1", field], word)
    assert client.get("/v1/prompt-sets?limit=1", headers=a).json()["items"] == before


def test_invalid_utf8_upload_names_the_line(api):
    client, a, _ = api
    data = b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n'
    r = client.post("/v1/prompt-sets", headers=a, data={"name": "u"},
                    files={"file": ("p.jsonl", io.BytesIO(data), "application/jsonl")})
    _only(r, 422, ["file", "line 2"], "not UTF-8")
    r = client.post("/v1/prompt-sets", content=b'{"name": "\xff", "items": []}', headers={**a, "content-type": "application/json"})
    _only(r, 422, [], "not UTF-8")


def test_any_accepted_text_reads_back_and_exports(api):
    """Whatever is stored can be read back: unusual but valid text round-trips exactly."""
    client, a, _ = api
    odd = "emoji 🧪, RTL \u05d0\u05d1, BOM \ufeff, line sep \u2028, max \U0010ffff, nonchar \uffff, tab\t"
    items = [{"prompt": odd, "reference": odd, "topic": odd, "answer": odd},
             {"prompt": [{"role": "system", "content": odd}, {"role": "user", "content": odd}], "reference": "r"}]
    sid = _set(client, a, items=items, name=odd[:50])
    prompts = client.get(f"/v1/prompt-sets/{sid}/prompts", headers=a)
    assert prompts.status_code == 200 and prompts.json()["items"][0]["reference"] == odd
    exported = client.get(f"/v1/prompt-sets/{sid}/export", headers=a)
    assert exported.status_code == 200
    assert [json.loads(line) for line in exported.text.splitlines()] == items


# ---------------------------------------------------------------- misleading errors
@pytest.mark.parametrize("field", ["reference", "topic"])
def test_nul_in_item_fields_names_them(api, field):
    client, a, _ = api
    r = client.post("/v1/prompt-sets", json={"name": "n", "items": [{"prompt": "p", field: NUL}]}, headers=a)
    _only(r, 422, ["items", 0, field], "NUL")


def test_nul_in_name_names_it(api):
    client, a, _ = api
    _only(client.post("/v1/prompt-sets", json={"name": NUL, "items": ITEMS}, headers=a), 422, ["name"], "NUL")


def test_infinite_learning_rate_and_nan_delta_name_their_fields(api):
    client, a, _ = api
    base = json.dumps(_run(client, a))[:-1]
    _only(_raw(client, "/v1/runs", a, base + ', "config": {"learning_rate": Infinity}}'), 422,
          ["config", "learning_rate"], "not a JSON number")
    _only(_raw(client, "/v1/runs", a, base + ', "continuous": true, "stopping": {"delta": NaN}}'), 422,
          ["stopping", "delta"], "not a JSON number")


# ---------------------------------------------------------------- bounds and strictness
@pytest.mark.parametrize("config,field,words", [
    ({"epochs": 1e20}, "epochs", "must be an integer"),
    ({"epochs": 1000}, "epochs", "must be in [1, 100]"),
    ({"batch_size": 10**12}, "batch_size", "must be in [1, 4096]"),
    ({"max_response_tokens": 10**15}, "max_response_tokens", "must be in [1, 32768]"),
    ({"learning_rate": 1e308}, "learning_rate", "must be in [0, 1]"),
    ({"seed": 2**40}, "seed", "must be in [0, 2147483647]"),
    ({"max_new_tokens": "256"}, "max_new_tokens", "must be an integer"),
    ({"train": {"learning_rate": 1e308}}, "train", "learning_rate: must be in [0, 1]"),
    # a mistyped switch or name is refused, not taken as truthy
    ({"mix_previous_pairs": "no"}, "mix_previous_pairs", "must be true or false"),
    ({"mix_previous_pairs": 1}, "mix_previous_pairs", "must be true or false"),
    ({"on_regression": 3}, "on_regression", "must be a string"),
    ({"eval_max_new_tokens": 0}, "eval_max_new_tokens", "must be in [1, 32768]"),
    ({"train": {"lora": "yes"}}, "train", "lora: must be true or false"),
])
def test_config_numbers_are_bounded(api, config, field, words):
    client, a, _ = api
    _only(client.post("/v1/runs", json=_run(client, a, config=config), headers=a), 422, ["config", field], words)


@pytest.mark.parametrize("over,loc,words", [
    ({"rounds": "2"}, ["rounds"], "valid integer"),
    ({"rounds": True}, ["rounds"], "valid integer"),
    ({"rounds": 101}, ["rounds"], "less than or equal to 100"),
    ({"surprise": 1}, ["surprise"], "Extra inputs are not permitted"),
    ({"continuous": "yes"}, ["continuous"], "valid boolean"),
])
def test_run_fields_are_strict(api, over, loc, words):
    client, a, _ = api
    _only(client.post("/v1/runs", json=_run(client, a, **over), headers=a), 422, loc, words)


def test_duplicate_ids_are_refused(api):
    client, a, _ = api
    sid = _set(client, a)
    r = client.post("/v1/runs", json={"method": "spin", "base_model": "gemma", "prompt_set_ids": [sid, sid]}, headers=a)
    _only(r, 422, ["prompt_set_ids"], f"repeated: [{sid}]")


def test_unknown_fields_refused_on_every_body(api):
    client, a, _ = api
    r = client.post("/v1/prompt-sets", json={"name": "x", "items": ITEMS, "extra": 1}, headers=a)
    _only(r, 422, ["extra"], "Extra inputs")
    r = client.post("/v1/runs/1/prompt-sets", json={"prompt_set_ids": [1], "extra": 1}, headers=a)
    _only(r, 422, ["extra"], "Extra inputs")
    _only(client.post("/v1/keys", json={"role": "member", "extra": 1}, headers=a), 422, ["extra"], "Extra inputs")


def test_body_size_limit_is_413_declared_or_streamed(services_env, monkeypatch):
    from fastapi.testclient import TestClient

    from services.gateway.main import create_app
    from shared.config import get_settings
    from tests.conftest import _key

    monkeypatch.setenv("AUTODIDACT_MAX_BODY_BYTES", "2000")
    get_settings.cache_clear()
    try:
        client = TestClient(create_app())
    finally:
        monkeypatch.delenv("AUTODIDACT_MAX_BODY_BYTES")
        get_settings.cache_clear()
    a = {"Authorization": f"Bearer {_key('ws-limit')}"}
    big = {"name": "big", "items": [{"prompt": "x" * 100}] * 50}
    _only(client.post("/v1/prompt-sets", json=big, headers=a), 413, [], "larger than 2000 bytes")
    chunks = (b"x" * 500 for _ in range(10))  # no Content-Length: counted as it streams
    r = client.post("/v1/prompt-sets", headers={**a, "content-type": "application/json"}, content=chunks)
    _only(r, 413, [], "larger than 2000 bytes")
    upload = ("\n".join(json.dumps({"prompt": "y" * 100}) for _ in range(40))).encode()
    r = client.post("/v1/prompt-sets", headers=a, data={"name": "u"},
                    files={"file": ("p.jsonl", io.BytesIO(upload), "application/jsonl")})
    _only(r, 413, [], "larger than 2000 bytes")
    assert client.post("/v1/prompt-sets", json={"name": "small", "items": ITEMS}, headers=a).status_code == 201


# ---------------------------------------------------------------- ids
@pytest.mark.parametrize("method,path", [
    ("get", "/v1/runs/99999999999999999999"), ("get", "/v1/models/99999999999999999999"),
    ("get", "/v1/prompt-sets/4294967296"), ("post", "/v1/runs/99999999999999999999/cancel"),
    ("get", "/v1/runs/-1"), ("get", "/v1/runs/0/pairs"),
])
def test_ids_out_of_range_are_404(api, method, path):
    client, a, _ = api
    r = getattr(client, method)(path, headers=a)
    _only(r, 404, [], "not found")


def test_huge_offset_is_422_naming_it(api):
    client, a, _ = api
    sid = _set(client, a)
    _only(client.get(f"/v1/prompt-sets/{sid}/prompts?offset=99999999999999999999", headers=a), 422,
          ["query", "offset"], "less than or equal to")


# ---------------------------------------------------------------- base models
def test_base_model_only_from_declared_places(api, tiny_model, tmp_path):
    client, a, _ = api
    sid = _set(client, a)

    def submit(name):
        return client.post("/v1/runs", json={"method": "spin", "base_model": name, "prompt_set_ids": [sid]}, headers=a)

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    refusals = [submit(n) for n in (str(outside), "/proc/self/root" + str(outside), "/etc", "/no/such/dir",
                                    "../" + outside.name, "tiny/../../elsewhere", "", ".")]
    msgs = set()
    for r in refusals:
        assert r.status_code == 422, r.text
        err = [e for e in r.json()["detail"] if e["loc"] == ["base_model"]][0]
        msgs.add(err["msg"])
        assert str(tmp_path) not in err["msg"] and "/etc" not in err["msg"]
    # one answer for every refusal (except the empty string's length error): no filesystem oracle
    (msg,) = msgs - {m for m in msgs if "at least 1 character" in m}
    assert "gemma" in msg and Path(tiny_model).name in msg
    listed = client.get("/v1/base-models", headers=a).json()["names"]
    assert listed[:2] == ["gemma", "gemma-chat"] and Path(tiny_model).name in listed and not any("/" in n for n in listed)
    for name in (Path(tiny_model).name, tiny_model):  # by name under the root, or its full path there
        r = submit(name)
        assert r.status_code == 201, r.text
        assert r.json()["base_model"] == str(Path(tiny_model).resolve())
        client.post(f"/v1/runs/{r.json()['id']}/cancel", headers=a)


# ---------------------------------------------------------------- the contract itself
def test_contract_is_typed_and_declares_its_errors(api):
    client, _, _ = api
    spec = client.get("/openapi.json").json()
    paths, comps = spec["paths"], spec["components"]["schemas"]
    create = paths["/v1/prompt-sets"]["post"]["requestBody"]["content"]
    assert create["application/json"]["schema"]["$ref"].endswith("/PromptSetRequest")
    assert create["multipart/form-data"]["schema"]["$ref"].endswith("/PromptSetUpload")
    assert comps["PromptSetRequest"]["additionalProperties"] is False and "PromptItem" in comps
    add = paths["/v1/runs/{run_id}/prompt-sets"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert add["$ref"].endswith("/AddPromptSets")
    assert comps["RunRequest"]["additionalProperties"] is False
    for path in ("/v1/prompt-sets/{set_id}/export", "/v1/runs/{run_id}/pairs"):
        ok = paths[path]["get"]["responses"]["200"]["content"]
        assert list(ok) == ["application/x-ndjson", "application/vnd.apache.parquet", "application/gzip"]
    assert list(paths["/v1/runs/{run_id}/plot.png"]["get"]["responses"]["200"]["content"]) == ["image/png"]
    assert "HTTPValidationError" not in comps
    for path, ops in paths.items():
        for method, op in ops.items():
            codes = set(op["responses"])
            if path != "/healthz":
                assert {"401", "422"} <= codes, (method, path)
            if "{" in path:
                assert "404" in codes, (method, path)
            for code, resp in op["responses"].items():
                if code.startswith("4"):
                    assert resp["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody"), (path, code)


def test_unknown_query_parameters_and_wrong_methods(api):
    client, a, _ = api
    _only(client.get("/v1/runs?limti=5", headers=a), 422, ["query", "limti"], "unknown query parameter")
    r = client.put("/v1/prompt-sets", headers=a)
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert r.json()["detail"][0]["type"] == "method_not_allowed"
