"""Faults through the whole distributed stack, on a tiny model: worker processes SIGKILLed at
random points of their tasks, Redis restarted with its queues lost, Postgres restarted under
the gateway and the workers. Each test lets the run finish and then checks, on the database,
that nothing was lost or duplicated: every sample, judgment vote, refinement tree, preference
pair and model version exists exactly once (one version per run, round and role).

Recovery comes from heartbeats and the conductor's sweep (shared/heartbeat.py,
services/gateway/conductor.py): the tests keep the broker's visibility timeout at an hour, so a
run that finishes in minutes was not rescued by Redis redelivering a dead worker's message.

The first test uses the session's workers and runs in the default tier. The others start a
private stack — their own Postgres cluster and redis-server on free ports (tests/private_servers.py),
a gateway process, a worker per queue and beat — because they restart the servers; they are
`slow`. Each prints its figures (kills, seconds from a kill until the task was claimed again,
seconds of downtime until the gateway answered again) and appends them as JSON lines to
$AUTODIDACT_FAULT_FIGURES when set (docs/reliability.md).
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from shared.models import ModelVersion, StageTask
from shared.queue import QUEUES
from tests.conftest import Workers, wait_for
from tests.e2e.faults import (
    SPAR, SPAR_QUEUES, TRAIN, Killer, Stack, all_done, check_spar_run, in_flight, prompt_set_of,
    progress_after, record, stage_running, summarize,
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model):
    from shared.db import make_engine
    from shared.migrate import upgrade
    from tests.private_servers import PrivatePostgres, PrivateRedis, free_port

    work = tmp_path_factory.mktemp("faults")
    pg, redis_server = PrivatePostgres(), PrivateRedis(work)
    pg.start()
    redis_server.start()
    url = pg.create_database("autodidact")
    upgrade(url)
    env = {
        "AUTODIDACT_DATABASE_URL": url, "AUTODIDACT_REDIS_URL": redis_server.url, "AUTODIDACT_EXECUTION": "celery",
        "AUTODIDACT_ARTIFACT_DIR": str(work / "artifacts"), "AUTODIDACT_GENERATION_SHARD_SIZE": "4",
        "AUTODIDACT_GENERATION_BATCH_SIZE": "2", "AUTODIDACT_GENERATION_BACKEND": "tests.fakes:scripted_backend",
        "AUTODIDACT_TORCH_THREADS": "1", "AUTODIDACT_VISIBILITY_TIMEOUT": "3600",
        "AUTODIDACT_SWEEP_INTERVAL_SECONDS": "2", "AUTODIDACT_HEARTBEAT_SECONDS": "1",
        "AUTODIDACT_HEARTBEAT_TIMEOUT": "8", "AUTODIDACT_RESEND_AFTER_SECONDS": "15",
        "FAKE_JUDGE_LATENCY": "0.4",  # judge and refiner calls take time, as a real LLM's would
        "AUTODIDACT_MODEL_ROOTS": str(Path(tiny_model).parent),  # the API takes base models only from there
    }
    log_dir = work / "logs"
    log_dir.mkdir()
    procs = Workers(env, log_dir)
    port = free_port()
    procs.start("gateway", ["gateway", "--host", "127.0.0.1", "--port", str(port), "--no-migrate"])
    for name in (*QUEUES, "beat"):
        procs.start(name)
    key = subprocess.run([sys.executable, "-m", "services.cli", "keys", "create", "--workspace", "faults",
                          "--role", "admin"], env=procs.env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.strip().splitlines()[-1]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"},
                          timeout=120)  # the first uploads import the verifier: slow on a busy host

    def up() -> bool:
        try:
            return client.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, timeout=60, what="the private gateway")
    st = Stack(pg, redis_server, procs, client, make_engine(url), log_dir, tiny_model)
    yield st
    procs.stop_all()
    client.close()
    st.engine.dispose()
    redis_server.stop()
    pg.remove()


def test_killed_training_worker_resumes_in_seconds(api, workers, tiny_model):
    """Default tier: SIGKILL the training worker while it trains; the sweep resends the task after
    its heartbeat goes stale and training resumes from its checkpoint; exactly one version."""
    from shared.db import get_engine

    client, a, _ = api
    items = [{"prompt": f"describe the lake {i}", "reference": f"the lake {i} is calm ."} for i in range(8)]
    ps = client.post("/v1/prompt-sets", json={"name": "kill-train", "items": items}, headers=a).json()
    kill = None
    for attempt in range(3):  # a kill that lands as training ends misses; the run then ends unkilled
        r = client.post("/v1/runs", headers=a, json={
            "method": "spin", "base_model": tiny_model, "prompt_set_ids": [ps["id"]], "rounds": 1,
            # eight epochs (about 32 steps, a checkpoint after each): long enough that a kill after a
            # random delay of up to 0.5 s mostly lands inside training; with one epoch (about 4
            # steps) training could end inside the delay. On a loaded host a kill can still land
            # just as the task finishes (not a hit): a new run is tried, up to three in all
            "config": {"samples_per_prompt": 2, "max_new_tokens": 16, "last_round_beta": None, **TRAIN, "epochs": 8}})
        assert r.status_code == 201, r.text
        run_id = r.json()["id"]
        killer = Killer(workers, get_engine(), run_id, {"train": "training"}, seed=1 + attempt)
        kill = killer.kill_once("training", max_delay=0.5)
        while kill is not None and not kill["hit"]:
            kill = killer.kill_once("training", max_delay=0.5)
        if kill is not None:  # None: kill_once saw the run finish
            break
    assert kill is not None, "three runs ended before the training worker could be killed"
    run = wait_for(lambda: (x := client.get(f"/v1/runs/{run_id}", headers=a).json())["status"] != "running" and x,
                   timeout=300, interval=1, what="the run to finish")
    assert run["status"] == "succeeded", (run["error"], workers.logs()[-5000:])
    with Session(get_engine()) as s:
        versions = s.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)).all()
        train = s.get(StageTask, kill["task"])
    assert [v.key.split(":", 2)[2] for v in versions] == ["round:1:policy"]
    assert train.status == "done" and train.attempts >= 2
    record({"test": "kill-training-default-tier", **summarize(killer.kills),
            "resumed_from_step": run["round_details"][0]["metrics"]["train"].get("resumed_from_step")})


@pytest.mark.slow
def test_workers_killed_at_random_points(stack):
    """SPaR, three rounds: the generation, judging, refinement and training workers are each
    SIGKILLed several times at random points of their tasks."""
    n_prompts, rounds, per_queue = 12, 3, 3
    run_id = stack.submit_spar(n_prompts, rounds)
    killer = Killer(stack.procs, stack.engine, run_id, SPAR_QUEUES, seed=7)
    delay = {"generation": 2.0, "judging": 1.0, "refinement": 1.0, "training": 2.0}
    started = time.monotonic()

    def hits(q: str) -> int:
        return sum(k["hit"] for k in killer.kills if k["queue"] == q)

    def keep_killing(queue: str) -> None:  # one thread per queue: kills overlap across queues
        while hits(queue) < per_queue and killer.kill_once(queue, delay[queue]) is not None:
            pass

    threads = [threading.Thread(target=keep_killing, args=(q,), daemon=True) for q in delay]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    stack.wait_finished(run_id)
    counts = check_spar_run(stack.engine, run_id, n_prompts, rounds)
    figures = {"test": "worker-kills", "run_seconds": round(time.monotonic() - started), **summarize(killer.kills),
               "counts": counts}
    record(figures)
    for q in delay:
        assert hits(q) >= 2, f"only {hits(q)} kills of the {q} worker landed in a task: {figures}"


@pytest.mark.slow
def test_redis_restarted_mid_round(stack):
    """Redis dies (no persistence: every queued and unacked message is gone) while round 1
    generates, and comes back 5 s later; the sweep resends what was lost."""
    n_prompts, rounds = 8, 2
    run_id = stack.submit_spar(n_prompts, rounds)
    started = time.monotonic()
    wait_for(lambda: stage_running(stack.engine, run_id, "generate"), timeout=120, interval=0.1,
             what="round 1 generation")
    flying = in_flight(stack.engine, run_id)
    stack.redis.stop()
    down = time.monotonic()
    time.sleep(5)
    # Meanwhile a client can still create runs: the API commits, and the sweep starts them later.
    late = stack.client.post("/v1/runs", json={"method": "spar", "base_model": stack.tiny_model,
                                               "prompt_set_ids": [prompt_set_of(stack.engine, run_id)],
                                               "rounds": 1, "config": SPAR})
    assert late.status_code == 201, late.text
    stack.redis.start()
    back = time.monotonic()
    progressed = progress_after(stack.engine, run_id, timeout=300)
    recovered = all_done(stack.engine, flying, timeout=300)
    stack.wait_finished(run_id)
    stack.wait_finished(late.json()["id"])
    counts = check_spar_run(stack.engine, run_id, n_prompts, rounds)
    check_spar_run(stack.engine, late.json()["id"], n_prompts, 1)
    record({"test": "redis-restart", "down_s": round(back - down, 1), "tasks_in_flight": len(flying),
            "progress_after_restart_s": round(progressed - back, 1),
            "in_flight_done_after_restart_s": round(recovered - back, 1), "run_seconds": round(time.monotonic() - started),
            "counts": counts})


@pytest.mark.slow
def test_postgres_restarted_mid_round(stack):
    """Postgres dies (immediate shutdown: crash recovery on restart) while round 1 generates and
    comes back 10 s later. Meanwhile the gateway answers 503 with a JSON body; afterwards it
    answers again and the conductor and workers carry the run to the end."""
    n_prompts, rounds = 8, 2
    run_id = stack.submit_spar(n_prompts, rounds)
    started = time.monotonic()
    wait_for(lambda: stage_running(stack.engine, run_id, "generate"), timeout=120, interval=0.1,
             what="round 1 generation")
    flying = in_flight(stack.engine, run_id)
    stack.pg.stop("immediate")
    down = time.monotonic()
    answers = []
    while time.monotonic() - down < 10:
        r = stack.client.get(f"/v1/runs/{run_id}")
        answers.append((r.status_code, r.headers.get("content-type"), r.text))
        time.sleep(0.5)
    assert answers and all(code == 503 and ctype == "application/json" and "database" in json.loads(body)["detail"][0]["msg"]
                           for code, ctype, body in answers), answers
    stack.pg.start()
    back = time.monotonic()
    wait_for(lambda: stack.client.get(f"/v1/runs/{run_id}").status_code == 200, timeout=60, interval=0.2,
             what="the gateway to answer again")
    gateway_s = time.monotonic() - back
    progressed = progress_after(stack.engine, run_id, timeout=300)
    recovered = all_done(stack.engine, flying, timeout=300)
    stack.wait_finished(run_id)
    counts = check_spar_run(stack.engine, run_id, n_prompts, rounds)
    record({"test": "postgres-restart", "down_s": round(back - down, 1), "gateway_503_answers": len(answers),
            "gateway_back_s": round(gateway_s, 1), "tasks_in_flight": len(flying),
            "progress_after_restart_s": round(progressed - back, 1),
            "in_flight_done_after_restart_s": round(recovered - back, 1),
            "run_seconds": round(time.monotonic() - started), "counts": counts})
