"""Prometheus /metrics of a real gateway (uvicorn on loopback) and of a real prefork Celery worker
after it ran tasks, parsed with prometheus_client's own parser; and the JSON log lines both write,
with the run, round, stage and task ids.

The worker listens on a Redis database of its own (14), so the session's workers (database 15)
never take its tasks, and the test sends to it the way shared.queue.enqueue does.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REDIS_URL, Workers, _key, wait_for
from tests.gateway_process import start_gateway
from tests.private_servers import free_port


def scrape(url: str) -> dict:
    """name -> family of the /metrics page at `url`."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:300]
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def samples(family, suffix: str = "", **labels) -> list:
    return [s for s in family.samples
            if s.name == family.name + suffix and all(s.labels.get(k) == v for k, v in labels.items())]


def json_lines(log_dir: Path, name: str) -> list[dict]:
    out = []
    for path in log_dir.glob(f"{name}-*.log"):
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
    return out


@pytest.fixture
def procs(services_env, tmp_path):
    w = Workers({**services_env, "AUTODIDACT_LOG_FORMAT": "json"}, tmp_path)
    yield w
    w.stop_all()


def test_gateway_serves_request_metrics_by_route_template(procs, tmp_path):
    base = start_gateway(procs, timeout=60)
    h = {"Authorization": f"Bearer {_key(f'metrics-{uuid.uuid4().hex[:6]}')}"}
    for run_id in (987654321, 987654322):  # two ids, one route template
        assert httpx.get(f"{base}/v1/runs/{run_id}", headers=h, timeout=10).status_code == 404
    assert httpx.get(f"{base}/v1/runs", timeout=10).status_code == 401  # no key
    assert httpx.get(f"{base}/no/such/path", timeout=10).status_code == 404

    families = scrape(f"{base}/metrics")  # no key needed
    requests, latency = families["autodidact_http_requests"], families["autodidact_http_request_seconds"]
    assert requests.type == "counter" and latency.type == "histogram"
    assert samples(requests, "_total", route="/healthz", status="200", method="GET")[0].value >= 1
    assert samples(requests, "_total", route="/v1/runs/{run_id}", status="404")[0].value == 2
    assert samples(requests, "_total", route="/v1/runs", status="401")[0].value == 1
    assert samples(requests, "_total", route="unmatched", status="404")[0].value == 1
    assert not [s for s in requests.samples if "987654321" in s.labels.get("route", "")]  # never the raw path
    assert samples(latency, "_count", route="/v1/runs/{run_id}", status="404")[0].value == 2
    assert samples(latency, "_bucket", route="/v1/runs/{run_id}", status="404", le="+Inf")[0].value == 2
    assert "/metrics" not in httpx.get(f"{base}/openapi.json", timeout=10).json()["paths"]

    lines = json_lines(tmp_path, "gateway")
    access = [x for x in lines if x["logger"] == "uvicorn.access"]
    assert access and {"timestamp", "level", "logger", "message"} <= set(access[0])


def _stage_tasks(payloads: list[dict]) -> tuple[int, list[int]]:
    """A running round of a fresh run, with one verifier StageTask per payload."""
    from shared import crud
    from shared.db import session_scope
    from shared.models import Round, Run, StageTask, utcnow

    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=f"metrics-{uuid.uuid4().hex[:6]}")
        run = Run(workspace_id=ws.id, method="rest_em", base_model="tiny", prompt_set_ids=[], config={},
                  status="running")
        s.add(run)
        s.flush()
        rnd = Round(run_id=run.id, number=3, status="running")
        s.add(rnd)
        s.flush()
        tasks = [StageTask(round_id=rnd.id, stage="verify", shard=i, payload=p, enqueued_at=utcnow())
                 for i, p in enumerate(payloads)]
        s.add_all(tasks)
        s.flush()
        return run.id, [t.id for t in tasks]


def test_worker_serves_task_stage_and_round_metrics(procs, tmp_path):
    from celery import Celery
    from sqlmodel import select

    from shared.db import session_scope
    from shared.metrics import LOG_HEADER
    from shared.models import StageTask

    broker = REDIS_URL.rsplit("/", 1)[0] + "/14"
    port = free_port()
    procs.env.update(AUTODIDACT_REDIS_URL=broker, AUTODIDACT_WORKER_METRICS_PORT=str(port))
    procs.start("judging", ["worker", "--queue", "judging", "--concurrency", "2", "--loglevel", "INFO"])
    sender = Celery("metrics-test", broker=broker)
    sender.connection_for_write().default_channel.client.flushdb()
    run_id, (ok, broken) = _stage_tasks([{"prompt_ids": []}, {}])  # {}: the work raises KeyError
    for st in (ok, broken, "not-an-id"):  # the last one fails the Celery task itself
        sender.send_task("judging.verify_shard", args=[st], queue="judging",
                         headers={LOG_HEADER: {"run_id": run_id, "round": 3}})

    def finished() -> bool:
        with session_scope() as s:
            states = s.exec(select(StageTask.status).where(StageTask.id.in_([ok, broken]))).all()
        return sorted(states) == ["done", "failed"]

    wait_for(finished, timeout=120, interval=1, what="the worker to run both stage tasks")
    url = f"http://127.0.0.1:{port}/metrics"

    def counted() -> dict | None:
        try:
            fams = scrape(url)
        except httpx.HTTPError:
            return None
        return fams if sum(s.value for s in fams["autodidact_tasks"].samples) >= 3 else None

    families = wait_for(counted, timeout=30, what="three tasks counted on the worker's /metrics")
    tasks = families["autodidact_tasks"]
    assert tasks.type == "counter"
    assert samples(tasks, "_total", queue="judging", task="judging.verify_shard", outcome="success")[0].value == 2
    assert samples(tasks, "_total", queue="judging", task="judging.verify_shard", outcome="failure")[0].value == 1
    stage = families["autodidact_stage_seconds"]
    assert stage.type == "histogram"
    assert samples(stage, "_count", stage="verify", outcome="done")[0].value == 1
    assert samples(stage, "_count", stage="verify", outcome="failed")[0].value == 1
    assert samples(families["autodidact_task_seconds"], "_count", task="judging.verify_shard")[0].value == 3
    assert samples(families["autodidact_run_round"], run_id=str(run_id))[0].value == 3
    sender.connection_for_write().default_channel.client.flushdb()  # the conductor.advance messages sent

    lines = json_lines(tmp_path, "judging")
    failed = [x for x in lines if x.get("task_id") == broken and x["level"] == "ERROR"]
    assert failed, lines[-5:]
    assert failed[0]["run_id"] == run_id and failed[0]["round"] == 3 and failed[0]["stage"] == "verify"
    assert "KeyError" in failed[0]["exc_info"]
    # Celery's own line about the task, written before the stage is known: ids from the header
    done = [x for x in lines if x.get("task_id") == ok and "succeeded" in x["message"]]
    assert done and done[0]["run_id"] == run_id and done[0]["task"] == "judging.verify_shard"
