"""The conductor on real Postgres, with tasks executed inline so the test controls every step:
a lost queue (conductor restart, flushed broker) is recovered by the sweep from database state,
advancing twice is harmless, and cancel stops further work."""
from __future__ import annotations

import pytest
from sqlmodel import select

from services.gateway import conductor
from shared import queue
from shared.config import get_settings
from shared.db import session_scope
from shared.models import Round, Run, Sample, StageTask
from tests.conftest import api_client, fresh_database


@pytest.fixture(scope="module")
def own_database(services_env, tmp_path_factory):
    """A database (and an artifact directory) of this module's own. The session's workers and beat
    share the session database, and a sweep there takes an in-process task that is slow for a lost
    message and hands it to a real worker, which then ends the round over there (seen under load,
    also with beat and the conductor killed for the test: a sweep or an advance sent earlier can
    still be waiting in Redis). Nothing but this process knows this database, so the test alone
    decides every step. Its ids start at 1 again, so its adapters go to a directory of their own
    instead of over the session's runs of the same ids."""
    with fresh_database("autodidact_inline") as url:
        yield {"AUTODIDACT_DATABASE_URL": url, "AUTODIDACT_ARTIFACT_DIR": str(tmp_path_factory.mktemp("inline-artifacts"))}


@pytest.fixture
def own_env(own_database, monkeypatch):
    """This module's database and artifacts for the test's duration; settings read again before and after."""
    for name, value in own_database.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def inline(own_env, monkeypatch):
    monkeypatch.setenv("AUTODIDACT_EXECUTION", "inline")
    monkeypatch.setenv("AUTODIDACT_RESEND_AFTER_SECONDS", "0")
    get_settings.cache_clear()
    queue._inline_queue.clear()
    yield queue
    queue._inline_queue.clear()  # own_env reads the settings again once this ends


@pytest.fixture
def api(inline):
    """`api_client` on this module's database."""
    return api_client()


def _start(api, tiny_model, n_prompts=6):
    client, a, _ = api
    items = [{"prompt": f"say {i}", "reference": f"{i} ."} for i in range(n_prompts)]
    ps = client.post("/v1/prompt-sets", json={"name": "c", "items": items}, headers=a).json()
    r = client.post("/v1/runs", headers=a, json={
        "method": "spin", "base_model": tiny_model, "prompt_set_ids": [ps["id"]], "rounds": 1,
        "config": {"max_new_tokens": 8, "learning_rate": 1e-3, "epochs": 1, "lora_r": 4}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _round(run_id):
    with session_scope() as s:
        return s.exec(select(Round).where(Round.run_id == run_id)).one()


def test_sweep_recovers_a_lost_queue_and_double_advance_is_harmless(api, tiny_model, inline):
    run_id = _start(api, tiny_model)
    queue.run_inline(max_tasks=1)  # the first advance plans the generation shards
    rnd = _round(run_id)
    with session_scope() as s:
        tasks = s.exec(select(StageTask).where(StageTask.round_id == rnd.id)).all()
    assert {t.stage for t in tasks} == {"generate"} and len(tasks) == 2  # 6 prompts / shards of 4
    queue._inline_queue.clear()  # the broker lost every message
    conductor.advance(rnd.id)  # advancing again plans nothing new
    with session_scope() as s:
        assert len(s.exec(select(StageTask).where(StageTask.round_id == rnd.id)).all()) == 2
    queue._inline_queue.clear()
    conductor.sweep()  # resends the pending shards, then drives the round to the end
    queue.run_inline()
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert run.status == "succeeded", run.error
        assert len(s.exec(select(Sample).where(Sample.round_id == rnd.id)).all()) == 6


def test_cancel_stops_the_run(api, tiny_model, inline):
    client, a, _ = api
    run_id = _start(api, tiny_model)
    queue.run_inline(max_tasks=1)
    r = client.post(f"/v1/runs/{run_id}/cancel", headers=a)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    queue.run_inline()
    with session_scope() as s:
        assert s.get(Run, run_id).status == "cancelled"
        assert s.exec(select(Sample).join(Round).where(Round.run_id == run_id)).all() == []
    assert client.post(f"/v1/runs/{run_id}/cancel", headers=a).status_code == 409


def test_a_round_without_training_data_keeps_its_model_and_the_run_goes_on(api, tiny_model, inline):
    client, a, _ = api
    never = [{"id": "keywords:existence", "kwargs": {"keywords": ["zebracornucopia"]}}]
    items = [{"prompt": f"say {i}", "constraints": never} for i in range(3)]
    ps = client.post("/v1/prompt-sets", json={"name": "never", "items": items}, headers=a).json()
    ev = client.post("/v1/prompt-sets", json={"name": "never-eval", "items": items, "split": "heldout"}, headers=a).json()
    r = client.post("/v1/runs", headers=a, json={
        "method": "rest_em", "base_model": tiny_model, "prompt_set_ids": [ps["id"]], "eval_prompt_set_ids": [ev["id"]],
        "rounds": 2, "config": {"samples_per_prompt": 2, "max_new_tokens": 6, "lora_r": 4}})
    assert r.status_code == 201, r.text
    queue.run_inline()
    run = client.get(f"/v1/runs/{r.json()['id']}", headers=a).json()
    assert run["status"] == "succeeded", run["error"]
    r1, r2 = run["round_details"]
    for rnd in (r1, r2):
        assert rnd["produced_version_id"] is None
        assert rnd["metrics"]["train"]["skipped"] == "no training data" and rnd["metrics"]["train"]["correct"] == 0
        assert rnd["metrics"]["eval"]["prompt_strict_acc"] == 0.0  # evaluated the unchanged model
    assert r2["policy_version_id"] == r1["policy_version_id"]  # round 2 samples from the same model


def test_a_conductor_error_fails_the_run_instead_of_wedging_it(api, tiny_model, inline):
    run_id = _start(api, tiny_model)
    with session_scope() as s:  # bad state the API would refuse, written behind its back
        run = s.get(Run, run_id)
        run.continuous, run.stopping = True, {"max_rounds": "abc"}
    queue.run_inline()
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert run.status == "failed" and "conductor" in run.error and "abc" in run.error
        assert _round(run_id).status == "failed"


def test_a_run_stored_with_loose_switches_still_advances_reading_them_as_before(api, tiny_model, inline):
    """Configs stored before switches were typed may hold 0 / 1 in a bool field; the code then read
    them by truth, and the conductor and the workers still do, while a submission with them is a 422."""
    from services.methods import get_recipe, parse_stored_config

    client, a, _ = api
    run_id = _start(api, tiny_model)
    with session_scope() as s:  # as an older version stored it
        run = s.get(Run, run_id)
        run.config = {**run.config, "mix_previous_pairs": 0, "train": {"lora": 1}}
    cfg, errors = parse_stored_config(get_recipe("spin").config_cls, {"mix_previous_pairs": 0, "train": {"lora": 1}})
    assert errors == [] and cfg.mix_previous_pairs is False and cfg.train == {"lora": True}
    more = client.post("/v1/prompt-sets", headers=a, json={"name": "more", "items": [
        {"prompt": "say more", "reference": "more ."}]}).json()["id"]
    added = client.post(f"/v1/runs/{run_id}/prompt-sets", headers=a, json={"prompt_set_ids": [more]})
    assert added.status_code == 200, added.text  # the stored config is read as the conductor reads it
    queue.run_inline()
    with session_scope() as s:
        run = s.get(Run, run_id)
        assert run.status == "succeeded", run.error
    r = client.post("/v1/runs", headers=a, json={"method": "spin", "base_model": tiny_model, "prompt_set_ids": [1],
                                                  "config": {"mix_previous_pairs": 0}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "mix_previous_pairs"


def test_transient_errors_go_back_to_pending_until_attempts_run_out(api, tiny_model, inline):
    from services.generation.base import TransientBackendError
    from shared.stages import MAX_ATTEMPTS, execute

    run_id = _start(api, tiny_model)
    queue.run_inline(max_tasks=1)  # plans the generation shards
    queue._inline_queue.clear()
    with session_scope() as s:
        st_id = s.exec(select(StageTask.id).where(StageTask.round_id == _round(run_id).id)).first()

    def flaky(ctx):
        raise TransientBackendError("all TGI servers busy")

    for attempt in range(1, MAX_ATTEMPTS):
        execute(st_id, flaky)
        with session_scope() as s:
            st = s.get(StageTask, st_id)
            assert (st.status, st.attempts) == ("pending", attempt) and "busy" in st.error
    assert not queue._inline_queue  # nothing advanced: the sweep resends pending tasks later
    conductor.sweep()
    assert ("generation.generate_shard", (st_id,)) in list(queue._inline_queue)
    queue._inline_queue.clear()
    execute(st_id, flaky)  # the last allowed attempt fails the task, and the conductor fails the run
    queue.run_inline()
    with session_scope() as s:
        assert s.get(StageTask, st_id).status == "failed"
        run = s.get(Run, run_id)
        assert run.status == "failed" and f"after {MAX_ATTEMPTS} attempts" in run.error


def test_the_sweep_resends_a_running_task_whose_worker_stopped_beating(api, tiny_model, inline, monkeypatch):
    from datetime import timedelta

    from shared.heartbeat import beat_once
    from shared.models import utcnow

    monkeypatch.setenv("AUTODIDACT_RESEND_AFTER_SECONDS", "600")
    monkeypatch.setenv("AUTODIDACT_HEARTBEAT_TIMEOUT", "20")
    get_settings.cache_clear()
    run_id = _start(api, tiny_model)
    queue.run_inline(max_tasks=1)  # plans the generation shards
    queue._inline_queue.clear()
    long_ago = utcnow() - timedelta(seconds=60)
    with session_scope() as s:
        dead, alive = s.exec(select(StageTask).where(StageTask.round_id == _round(run_id).id)
                             .order_by(StageTask.shard)).all()
        for st in (dead, alive):  # both claimed a minute ago by a worker
            st.status, st.started_at, st.heartbeat_at, st.enqueued_at = "running", long_ago, long_ago, long_ago
        dead_id, alive_id = dead.id, alive.id
    beat_once(alive_id)  # only this one's worker is still beating
    conductor.sweep()
    sent = [args[0] for name, args in queue._inline_queue if name == "generation.generate_shard"]
    assert sent == [dead_id]
    queue._inline_queue.clear()
    conductor.sweep()  # resent once, not on every sweep
    assert not [a for n, a in queue._inline_queue if n == "generation.generate_shard"]
    with session_scope() as s:  # the copy was not taken up for resend_after_seconds: sent again
        s.get(StageTask, dead_id).enqueued_at = utcnow() - timedelta(seconds=601)
    conductor.sweep()
    assert [a[0] for n, a in queue._inline_queue if n == "generation.generate_shard"] == [dead_id]


def test_a_running_task_beats_while_it_works(own_env):  # not on the session database: its sweep would see the task
    import time

    from shared.heartbeat import heartbeat
    from shared.models import Round as R, Run as Rn, utcnow

    with session_scope() as s:  # a bare run/round/task, enough for the stamp
        from shared import crud

        ws = crud.get_or_create_workspace(s, name="beat")
        run = Rn(workspace_id=ws.id, method="spin", base_model="x", prompt_set_ids=[], config={}, rounds=1)
        s.add(run)
        s.flush()
        rnd = R(run_id=run.id, number=1)
        s.add(rnd)
        s.flush()
        st = StageTask(round_id=rnd.id, stage="generate", status="running", heartbeat_at=None)
        s.add(st)
        s.flush()
        st_id = st.id
    before = utcnow()
    with heartbeat(st_id, interval=0.2):
        time.sleep(1.0)
    with session_scope() as s:
        stamp = s.get(StageTask, st_id).heartbeat_at
    assert stamp is not None and stamp > before
    time.sleep(0.5)
    with session_scope() as s:  # the thread stopped with the block
        assert s.get(StageTask, st_id).heartbeat_at == stamp
