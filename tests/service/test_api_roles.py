"""Roles (every cell of the README's table), keys (list, revoke, expire; API and CLI),
idempotent creation and list paging, on the real gateway and Postgres."""
from __future__ import annotations

import uuid

import pytest
from typer.testing import CliRunner

from tests.conftest import _key

ITEMS = [{"prompt": "Say hi.", "reference": "Hi!"}]


@pytest.fixture(scope="module")
def team(api):
    """A fresh workspace with an admin key, a member key and a second member key."""
    client, _, _ = api
    ws = f"team-{uuid.uuid4().hex[:6]}"
    hdr = lambda k: {"Authorization": f"Bearer {k}"}  # noqa: E731
    return client, hdr(_key(ws, "admin")), hdr(_key(ws, "member")), hdr(_key(ws, "member"))


def _set(client, h) -> int:
    r = client.post("/v1/prompt-sets", json={"name": "r", "items": ITEMS}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _run(client, h, sid) -> int:
    r = client.post("/v1/runs", json={"method": "spin", "base_model": "gemma", "prompt_set_ids": [sid]}, headers=h)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _version(client, h) -> int:
    """A model version of the workspace (the base version every run records)."""
    return client.get("/v1/models", headers=h).json()["items"][0]["id"]


def _forbidden(r, words):
    assert r.status_code == 403, r.text
    assert r.json()["detail"][0]["type"] == "forbidden" and words in r.json()["detail"][0]["msg"]


# The table in the README, row by row: (action, admin allowed, member allowed).
def test_read_and_create_sets_and_runs_both_roles(team):
    client, admin, member, _ = team
    for h in (admin, member):
        sid = _set(client, h)
        rid = _run(client, h, sid)
        for path in ("/v1/prompt-sets", f"/v1/prompt-sets/{sid}", f"/v1/prompt-sets/{sid}/prompts",
                     f"/v1/prompt-sets/{sid}/export", "/v1/runs", f"/v1/runs/{rid}", f"/v1/runs/{rid}/pairs",
                     "/v1/models", "/v1/base-models", f"/v1/runs/{rid}/rounds/1/train-steps"):
            assert client.get(path, headers=h).status_code == 200, (path, h is admin)
        assert client.get(f"/v1/models/{_version(client, h)}", headers=h).status_code == 200


def test_changing_own_runs_both_roles(team):
    client, admin, member, _ = team
    for h in (admin, member):
        rid = _run(client, h, _set(client, h))
        add = client.post(f"/v1/runs/{rid}/prompt-sets", json={"prompt_set_ids": [_set(client, h)]}, headers=h)
        assert add.status_code == 200, add.text
        assert client.post(f"/v1/runs/{rid}/cancel", headers=h).json()["status"] == "cancelled"


def test_changing_another_keys_run_admin_only(team):
    client, admin, member, member2 = team
    of_admin = _run(client, admin, _set(client, admin))
    of_member2 = _run(client, member2, _set(client, member2))
    for rid in (of_admin, of_member2):
        _forbidden(client.post(f"/v1/runs/{rid}/cancel", headers=member), "another key")
        _forbidden(client.post(f"/v1/runs/{rid}/prompt-sets", json={"prompt_set_ids": [_set(client, member)]},
                               headers=member), "another key")
    assert client.get(f"/v1/runs/{of_admin}", headers=member).json()["status"] != "cancelled"
    assert client.post(f"/v1/runs/{of_member2}/prompt-sets", json={"prompt_set_ids": [_set(client, admin)]},
                       headers=admin).status_code == 200
    assert client.post(f"/v1/runs/{of_member2}/cancel", headers=admin).json()["status"] == "cancelled"


def test_promote_admin_only(team):
    client, admin, member, _ = team
    _run(client, admin, _set(client, admin))
    vid = _version(client, admin)
    _forbidden(client.post(f"/v1/models/{vid}/promote", headers=member), "admin key")
    assert client.get(f"/v1/models/{vid}", headers=admin).json()["promoted"] is False
    assert client.post(f"/v1/models/{vid}/promote", headers=admin).json()["promoted"] is True


def test_keys_admin_only(team):
    client, admin, member, _ = team
    _forbidden(client.post("/v1/keys", json={"role": "member"}, headers=member), "admin key")
    _forbidden(client.get("/v1/keys", headers=member), "admin key")
    _forbidden(client.post("/v1/keys/1/revoke", headers=member), "admin key")
    assert client.get("/v1/keys", headers=admin).status_code == 200


# ---------------------------------------------------------------- keys
def test_key_lifecycle_over_the_api(team):
    client, admin, _, _ = team
    r = client.post("/v1/keys", json={"role": "member"}, headers=admin)
    assert r.status_code == 201, r.text
    new = r.json()
    plain, prefix = new["key"], new["prefix"]
    assert plain.startswith(prefix + "_") and new["state"] == "active"
    h = {"Authorization": f"Bearer {plain}"}
    assert client.get("/v1/runs", headers=h).status_code == 200
    listed = {k["id"]: k for k in client.get("/v1/keys", headers=admin).json()}
    assert listed[new["id"]]["prefix"] == prefix and "key" not in listed[new["id"]]
    assert all(plain[len(prefix):][1:9] not in str(k) for k in listed.values())  # no secret characters
    revoked = client.post(f"/v1/keys/{new['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    r = client.get("/v1/runs", headers=h)
    assert r.status_code == 401 and r.json()["detail"][0]["msg"] == "revoked API key"
    assert client.post("/v1/keys/999999/revoke", headers=admin).status_code == 404
    assert client.post("/v1/keys/99999999999/revoke", headers=admin).status_code == 404


def test_expired_key_is_401_at_once(team):
    from datetime import timedelta

    from shared.db import session_scope
    from shared.models import ApiKey, utcnow

    client, admin, _, _ = team
    r = client.post("/v1/keys", json={"role": "member", "expires_in_seconds": 3600}, headers=admin)
    assert r.status_code == 201 and r.json()["expires_at"] is not None
    h = {"Authorization": f"Bearer {r.json()['key']}"}
    assert client.get("/v1/runs", headers=h).status_code == 200
    with session_scope() as s:  # move the clock instead of waiting an hour
        s.get(ApiKey, r.json()["id"]).expires_at = utcnow() - timedelta(seconds=1)
    r2 = client.get("/v1/runs", headers=h)
    assert r2.status_code == 401 and r2.json()["detail"][0]["msg"] == "expired API key"
    bad = client.post("/v1/keys", json={"role": "member", "expires_in_seconds": 1}, headers=admin)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["expires_in_seconds"]


def test_keys_from_the_cli(services_env, api):
    from services.cli import app

    client, _, _ = api
    ws = f"cli-{uuid.uuid4().hex[:6]}"
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "create", "--workspace", ws, "--role", "member", "--expires-in", "30d"])
    assert made.exit_code == 0, made.output
    plain = made.output.strip()
    h = {"Authorization": f"Bearer {plain}"}
    assert client.get("/v1/runs", headers=h).status_code == 200
    listing = runner.invoke(app, ["keys", "list", "--workspace", ws])
    prefix = plain.rsplit("_", 1)[0] if plain.count("_") == 2 else plain[:12]
    assert listing.exit_code == 0 and prefix in listing.output and "active" in listing.output
    assert plain[len(prefix) + 1:][:8] not in listing.output
    from shared import crud
    from shared.db import session_scope

    with session_scope() as s:
        key_id = str(crud.lookup_api_key(s, key=plain).id)
    revoked = runner.invoke(app, ["keys", "revoke", key_id, "--workspace", ws])
    assert revoked.exit_code == 0, revoked.output
    assert client.get("/v1/runs", headers=h).status_code == 401
    assert "revoked" in runner.invoke(app, ["keys", "list", "--workspace", ws]).output
    bad = runner.invoke(app, ["keys", "create", "--workspace", ws, "--expires-in", "soon"])
    assert bad.exit_code != 0 and "30d" in bad.output


# ---------------------------------------------------------------- idempotency
def test_idempotent_run_creation(team):
    client, admin, member, _ = team
    sid = _set(client, admin)
    body = {"method": "spin", "base_model": "gemma", "prompt_set_ids": [sid]}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/v1/runs", json=body, headers={**admin, **key})
    again = client.post("/v1/runs", json=body, headers={**admin, **key})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.headers.get("Idempotency-Replayed") == "true"
    ids = [r["id"] for r in client.get("/v1/runs?limit=5", headers=admin).json()["items"]]
    assert ids.count(first.json()["id"]) == 1 and ids[0] == first.json()["id"]
    other = client.post("/v1/runs", json={**body, "rounds": 2}, headers={**admin, **key})
    assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # a failed first try does not hold the key: the corrected retry creates
    k2 = {"Idempotency-Key": uuid.uuid4().hex}
    assert client.post("/v1/runs", json={**body, "prompt_set_ids": [10**9]}, headers={**admin, **k2}).status_code == 422
    assert client.post("/v1/runs", json={**body, "prompt_set_ids": [10**9]}, headers={**admin, **k2}).status_code == 422
    bad = client.post("/v1/runs", json=body, headers={**admin, "Idempotency-Key": "with space"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]


def test_idempotent_prompt_set_creation_json_and_upload(team):
    import io

    client, admin, _, _ = team
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/v1/prompt-sets", json={"name": "idem", "items": ITEMS}, headers={**admin, **key})
    again = client.post("/v1/prompt-sets", json={"name": "idem", "items": ITEMS}, headers={**admin, **key})
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    data = b'{"prompt": "a"}\n{"prompt": "b"}\n'
    ids = {client.post("/v1/prompt-sets", headers={**admin, **key}, data={"name": "up"},
                       files={"file": ("p.jsonl", io.BytesIO(data), "application/jsonl")}).json()["id"] for _ in range(2)}
    assert len(ids) == 1
    newest = client.get("/v1/prompt-sets?limit=2", headers=admin).json()["items"]
    assert newest[0]["id"] in ids and newest[1]["id"] not in ids


# ---------------------------------------------------------------- paging
@pytest.mark.parametrize("path", ["/v1/prompt-sets", "/v1/runs", "/v1/models"])
def test_lists_page_with_a_cursor(team, path):
    from shared import crud
    from shared.db import session_scope

    client, admin, _, _ = team
    for _ in range(3):
        _run(client, admin, _set(client, admin))
    with session_scope() as s:  # model versions come from training; make a few directly
        ws = crud.lookup_api_key(s, key=admin["Authorization"].split()[1]).workspace_id
        for i in range(3):
            crud.get_or_create_version(s, workspace_id=ws, key=f"paging:{uuid.uuid4().hex}", base_model="gemma")
    every = []
    cursor = None
    while True:
        q = f"{path}?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(q, headers=admin).json()
        assert len(page["items"]) <= 2
        every += [x["id"] for x in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert every == sorted(every, reverse=True) and len(every) == len(set(every)) >= 3
    assert "round_details" not in client.get(f"{path}?limit=1", headers=admin).json()["items"][0]
    for bad in ("abc", "-1", "c0", "c" + "1" * 11, "12"):
        r = client.get(f"{path}?cursor={bad}", headers=admin)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert client.get(f"{path}?limit=201", headers=admin).status_code == 422
