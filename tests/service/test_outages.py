"""The gateway while a backing service is down: 503 with a JSON body, never a plain 500, and a
run submitted while the broker is down is created once and started by the sweep later."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlmodel import func, select

from shared.config import get_settings
from shared.db import session_scope
from shared.models import Run

DEAD = "postgresql://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1: refused at once


@pytest.fixture
def db_down(services_env, monkeypatch):
    from services.gateway.main import create_app

    monkeypatch.setenv("AUTODIDACT_DATABASE_URL", DEAD)
    get_settings.cache_clear()
    yield TestClient(create_app(), raise_server_exceptions=False)
    get_settings.cache_clear()


@pytest.mark.parametrize("method,path,body", [
    ("GET", "/v1/runs/1", None), ("GET", "/v1/prompt-sets", None), ("GET", "/v1/models", None),
    ("POST", "/v1/runs", {"method": "spin", "base_model": "gemma", "prompt_set_ids": [1], "rounds": 1}),
    ("POST", "/v1/prompt-sets", {"name": "x", "items": [{"prompt": "hi"}]}),
])
def test_database_down_answers_503_json(db_down, method, path, body):
    for key in ("ak_whatever", "not-even-a-key"):  # the key lookup itself needs the database
        r = db_down.request(method, path, json=body, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 503, r.text
        assert r.headers["content-type"] == "application/json"
        [item] = r.json()["detail"]
        assert item["type"] == "unavailable" and "database" in item["msg"] and item["loc"] == []
        assert int(r.headers["retry-after"]) > 0
    health = db_down.get("/healthz")
    assert health.status_code == 503 and health.json()["database"].startswith("error")


def test_a_run_submitted_while_the_broker_is_down_is_created_once(api, tiny_model, monkeypatch):
    """The broker refusing the send after the run is committed: 201 (not a 500 a client would
    retry into a second run), and the round is left open for the sweep to start."""
    from kombu.exceptions import OperationalError

    from shared import queue
    from shared.models import Round

    client, a, _ = api
    ps = client.post("/v1/prompt-sets", json={"name": "b", "items": [{"prompt": "p", "reference": "r"}]},
                     headers=a).json()

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(queue.celery_app, "send_task", refuse)
    with session_scope() as s:
        before = s.exec(select(func.count()).select_from(Run)).one()
    r = client.post("/v1/runs", headers=a, json={"method": "spin", "base_model": tiny_model,
                                                 "prompt_set_ids": [ps["id"]], "rounds": 1})
    assert r.status_code == 201, r.text
    with session_scope() as s:
        assert s.exec(select(func.count()).select_from(Run)).one() == before + 1
        rnd = s.exec(select(Round).where(Round.run_id == r.json()["id"])).one()
        assert rnd.status == "running"  # the sweep advances every running round
