"""An embedded run whose process stopped mid-round goes on with `autodidact resume`: the shards it
finished keep their results, the one cut off and the ones never started run, the run ends as if it
had never stopped. The process death is simulated by dropping the in-process queue after some tasks
ran, with one task left marked running (what a kill leaves behind)."""
from __future__ import annotations

import json

import pytest
from sqlmodel import select
from typer.testing import CliRunner

N_PROMPTS, N_SAMPLES = 6, 2


@pytest.fixture
def embedded_db(tmp_path, monkeypatch):
    from services import embedded
    from shared.config import get_settings

    monkeypatch.setenv("AUTODIDACT_GENERATION_SHARD_SIZE", "2")  # three generation shards
    embedded.configure(tmp_path / "resume.db", tmp_path / "artifacts")
    yield tmp_path
    get_settings.cache_clear()


def _tasks(run_id: int) -> list:
    from shared.db import session_scope
    from shared.models import Round, StageTask

    with session_scope() as s:
        rounds = s.exec(select(Round.id).where(Round.run_id == run_id)).all()
        return [(t.id, t.stage, t.status, t.attempts) for t in
                s.exec(select(StageTask).where(StageTask.round_id.in_(rounds)).order_by(StageTask.id)).all()]


def test_a_stopped_embedded_run_resumes_where_it_stopped(tiny_model, embedded_db):
    from services import embedded
    from services.cli import app
    from shared import crud, queue
    from shared.db import session_scope
    from shared.models import Sample, StageTask

    prompts = embedded_db / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"name {i} colours", "constraints": [
        {"id": "punctuation:no_comma", "kwargs": {}}]}) + "\n" for i in range(N_PROMPTS)))
    run_id = embedded.create_run(method="rest_em", prompts=prompts, model=tiny_model, rounds=1,
                                 config={"samples_per_prompt": N_SAMPLES, "max_new_tokens": 8, "epochs": 1,
                                         "batch_size": 2, "lora_r": 4})
    # run until one generation shard is done, then "kill" the process: the queue is lost and the
    # next shard is left as a dead worker leaves it, running
    while not any(stage == "generate" and status == "done" for _, stage, status, _ in _tasks(run_id)):
        assert queue.run_inline(max_tasks=1) == 1
    queue._inline_queue.clear()
    gen = [t for t in _tasks(run_id) if t[1] == "generate"]
    assert [t[2] for t in gen] == ["done", "pending", "pending"]
    with session_scope() as s:
        s.get(StageTask, gen[1][0]).status = "running"
        kept = {x.id for x in s.exec(select(Sample)).all()}
    assert len(kept) == 2 * N_SAMPLES  # the finished shard's samples

    result = CliRunner().invoke(app, ["resume", str(run_id), "--db", str(embedded_db / "resume.db")])
    assert result.exit_code == 0, result.output
    assert "2 stage task(s) queued again" in result.output

    with session_scope() as s:
        run = crud.get_run(s, run_id=run_id)
        assert run.status == "succeeded", run.error
        samples = s.exec(select(Sample)).all()
    assert len(samples) == N_PROMPTS * N_SAMPLES and kept <= {x.id for x in samples}  # none made twice
    after = {t[0]: t for t in _tasks(run_id)}
    assert after[gen[0][0]][3] == 1  # the finished shard did not run again
    assert all(t[2] == "done" for t in after.values())

    # a run that has ended, or one the database does not hold, is refused with a reason
    with pytest.raises(ValueError, match="has ended: succeeded"):
        embedded.resume(run_id)
    result = CliRunner().invoke(app, ["resume", "999", "--db", str(embedded_db / "resume.db")])
    assert result.exit_code == 2 and "no run 999" in result.output
