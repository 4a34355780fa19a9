"""Experiment tracking end to end: an embedded two-round SPIN run on the tiny model with
`tracking: "mlflow,tensorboard"` in its config lands in a real MLflow store and real TensorBoard
event files (params, per-step training metrics on one increasing step, per-round held-out metrics,
the plot and a pairs sample); a run whose trackers are broken still succeeds."""
from __future__ import annotations

import json
import logging

import pytest

CONFIG = {"max_new_tokens": 12, "learning_rate": 1e-3, "epochs": 1, "batch_size": 2, "lora_r": 4}
NO_COMMA = [{"id": "punctuation:no_comma", "kwargs": {}}]


@pytest.fixture
def embedded_dir(tmp_path, monkeypatch):
    from shared import tracking
    from shared.config import get_settings

    tracking._clients.clear()
    tracking._down_until.clear()
    tracking._warned.clear()
    yield tmp_path
    for c in tracking._clients.values():
        if isinstance(c, tracking._TensorBoard):
            for w in c._writers.values():
                w.close()
    tracking._clients.clear()
    get_settings.cache_clear()  # back to the environment's settings for the other tests


def _files(tmp_path):
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"list {i} fruits", "reference": "apple banana cherry ."}) + "\n"
                             for i in range(4)))
    heldout.write_text("".join(json.dumps({"prompt": f"name {i} colours", "constraints": NO_COMMA}) + "\n"
                               for i in range(3)))
    return train, heldout


def test_a_tracked_embedded_run_reaches_mlflow_and_tensorboard(tiny_model, embedded_dir):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from services import embedded
    from shared import crud
    from shared.db import session_scope

    embedded.configure(embedded_dir / "run.db", embedded_dir / "artifacts")
    train, heldout = _files(embedded_dir)
    run_id = embedded.create_run(method="spin", prompts=train, eval_prompts=heldout, model=tiny_model, rounds=2,
                                 config={**CONFIG, "tracking": "mlflow,tensorboard"})
    embedded.drive(run_id, show_progress=False)
    with session_scope() as s:
        run = crud.get_run(s, run_id=run_id)
        assert run.status == "succeeded", run.error
        steps = [len(r.metrics["train_steps"]) for r in crud.rounds_of_run(s, run_id=run_id)]
    assert len(steps) == 2 and all(steps)

    tracking_dir = embedded_dir / "artifacts" / "tracking"
    client = MlflowClient(tracking_uri=f"sqlite:///{tracking_dir / 'mlflow.db'}")
    (mrun,) = client.search_runs([client.get_experiment_by_name("autodidact").experiment_id])
    assert mrun.info.run_name == f"run-{run_id}-spin" and mrun.info.status == "FINISHED"
    assert mrun.data.params["method"] == "spin" and mrun.data.params["config.lora_r"] == "4"
    loss = client.get_metric_history(mrun.info.run_id, "train/loss")
    assert [m.step for m in loss] == list(range(1, sum(steps) + 1))  # round 2 continues round 1's steps
    assert {"train/lr", "train/margin", "train/accuracy", "train/tokens_per_s"} <= set(mrun.data.metrics)
    acc = client.get_metric_history(mrun.info.run_id, "eval/prompt_strict_acc")
    assert [m.step for m in acc] == [1, 2] and all(0 <= m.value <= 1 for m in acc)
    assert "eval_base/prompt_strict_acc" in mrun.data.metrics and "stage_seconds/train" in mrun.data.metrics
    assert "eval/limit_rate" in mrun.data.metrics and "gate/adopted" in mrun.data.metrics
    top = {f.path for f in client.list_artifacts(mrun.info.run_id)}
    pairs = {f.path for f in client.list_artifacts(mrun.info.run_id, "pairs")}
    assert "accuracy.png" in top and {"pairs/round-1.jsonl", "pairs/round-2.jsonl"} <= pairs
    sample = client.download_artifacts(mrun.info.run_id, "pairs/round-1.jsonl", str(embedded_dir))
    first = json.loads(open(sample).readline())
    assert first["chosen"] == "apple banana cherry ." and first["source"]

    (logdir,) = (tracking_dir / "tensorboard").iterdir()
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, sum(steps) + 1))
    assert [e.step for e in events.Scalars("eval/prompt_strict_acc")] == [1, 2]
    assert events.Images("accuracy.png")


def test_a_broken_tracker_does_not_fail_the_run(tiny_model, embedded_dir, monkeypatch, caplog):
    from services import embedded
    from services.methods.runs import RunInvalid
    from shared import crud
    from shared.db import session_scope

    blocker = embedded_dir / "not-a-dir"
    blocker.write_text("a file where the trackers want directories")
    monkeypatch.setenv("AUTODIDACT_TRACKING", "mlflow,tensorboard")
    monkeypatch.setenv("AUTODIDACT_TRACKING_URI", f"sqlite:///{blocker / 'mlflow.db'}")
    monkeypatch.setenv("AUTODIDACT_TENSORBOARD_DIR", str(blocker / "tb"))
    embedded.configure(embedded_dir / "run.db", embedded_dir / "artifacts")
    train, heldout = _files(embedded_dir)
    with pytest.raises(RunInvalid, match="config.tracking: .*unknown tracking backend"):  # the API's 422
        embedded.create_run(method="spin", prompts=train, model=tiny_model, rounds=1,
                            config={**CONFIG, "tracking": "wandb"})
    with caplog.at_level(logging.WARNING, logger="shared.tracking"):
        run_id = embedded.create_run(method="spin", prompts=train, eval_prompts=heldout, model=tiny_model,
                                     rounds=1, config=CONFIG)
        embedded.drive(run_id, show_progress=False)
    with session_scope() as s:
        assert crud.get_run(s, run_id=run_id).status == "succeeded"
    warned = [r.getMessage() for r in caplog.records if r.name == "shared.tracking"]
    assert len(warned) == 2 and all("tracking never fails a run" in w for w in warned), warned
