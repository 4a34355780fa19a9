"""Experiment tracking (shared/tracking.py) against a real MLflow store and real TensorBoard event
files, read back with MlflowClient and tensorboard's EventAccumulator."""
from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timezone

import pytest

from shared import tracking
from shared.config import Settings
from shared.tracking import TrackedRun, flatten, parse_backends, run_tracker, step_rows

RUN = TrackedRun(7, "spin", datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))


@pytest.fixture(autouse=True)
def fresh_clients():
    """Each test gets its own clients and failure memory (they are per process)."""
    for d in (tracking._clients, tracking._down_until):
        d.clear()
    tracking._warned.clear()
    yield
    for c in tracking._clients.values():
        if isinstance(c, tracking._TensorBoard):
            for w in c._writers.values():
                w.close()
    tracking._clients.clear()


def _png() -> bytes:
    from services.judging.evaluation import plot_run

    buf = io.BytesIO()
    plot_run([{"round": 0, "prompt_strict_acc": 0.2}, {"round": 1, "prompt_strict_acc": 0.3}], buf)
    return buf.getvalue()


def _log_everything(tracker) -> None:
    tracker.log_params({"method": "spin", "rounds": 2, "config": {"beta": 0.1, "train": {"schedule": "cosine"}}})
    round1 = [{"step": 1, "epoch": 1, "loss": 0.69, "lr": 1e-4, "margin": 0.0, "accuracy": None},
              {"step": 2, "epoch": 1, "loss": 0.5, "lr": 1e-4, "margin": 0.4, "accuracy": 1.0}]
    tracker.log_metrics(step_rows(round1, "train", 0))
    tracker.log_metrics(step_rows([{"step": 1, "loss": 0.3}], "train", 2))  # round 2 continues at step 3
    tracker.log_metrics([(1, {"eval": {"prompt_strict_acc": 0.25, "ci95": {"prompt_strict_acc": [0.1, 0.4]},
                                       "outcomes": [[1, 1, 1, 1, 1, 1]], "limit_rate": 0.0},
                              "gate": {"adopted": True, "reasons": []}})])
    tracker.log_artifact("accuracy.png", _png(), 1)
    tracker.log_artifact("pairs/round-1.jsonl", b'{"chosen": "a", "rejected": "b"}\n', 1)


def test_backends_parse_and_fail_naming_the_allowed_ones():
    assert parse_backends("none") == [] and parse_backends(" MLflow, tensorboard,mlflow") == ["mlflow", "tensorboard"]
    assert parse_backends("", allow_empty=True) == []
    with pytest.raises(ValueError, match="wandb.*mlflow, tensorboard"):
        parse_backends("wandb")
    with pytest.raises(ValueError):
        Settings(tracking="mlflow,wandb")


@pytest.mark.parametrize("value, ok", [("", True), ("none", True), ("mlflow", True), ("tensorboard,mlflow", True),
                                       ("wandb", False), (3, False)])
def test_a_run_config_tracking_field_is_validated_naming_the_field(value, ok):
    from services.methods import get_recipe, parse_config

    cfg, errors = parse_config(get_recipe("spin").config_cls, {"tracking": value})
    assert (cfg is not None) == ok
    if not ok:
        assert errors[0]["loc"] == ["config", "tracking"], errors


def test_flatten_keeps_numbers_intervals_and_drops_vectors_and_text():
    assert flatten({"a": {"b": 1, "c": True, "ci": [0.1, 0.2], "v": [1, 2, 3], "s": "x", "n": None,
                          "nan": float("nan")}}) == {"a/b": 1.0, "a/c": 1.0, "a/ci/low": 0.1, "a/ci/high": 0.2}


def test_mlflow_store_receives_params_steps_round_metrics_and_artifacts(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    settings = Settings(tracking="mlflow", tracking_uri=uri, artifact_dir=tmp_path / "a")
    _log_everything(run_tracker(settings, RUN))
    run_tracker(settings, RUN).finish("succeeded")

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("autodidact")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run-7-spin" and run.info.status == "FINISHED"
    assert run.data.params["method"] == "spin" and run.data.params["config.beta"] == "0.1"
    assert run.data.params["config.train.schedule"] == "cosine"
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in loss] == [(1, 0.69), (2, 0.5), (3, 0.3)]
    assert "train/accuracy" in run.data.metrics and "train/step" not in run.data.metrics
    assert run.data.metrics["eval/prompt_strict_acc"] == 0.25
    assert run.data.metrics["eval/ci95/prompt_strict_acc/high"] == 0.4
    assert run.data.metrics["gate/adopted"] == 1.0
    assert not any(k.startswith("eval/outcomes") for k in run.data.metrics)
    files = {f.path for f in client.list_artifacts(run.info.run_id)} | \
        {f.path for f in client.list_artifacts(run.info.run_id, "pairs")}
    assert {"accuracy.png", "pairs/round-1.jsonl"} <= files
    local = client.download_artifacts(run.info.run_id, "pairs/round-1.jsonl", str(tmp_path))
    assert json.loads(open(local).read())["chosen"] == "a"


def test_mlflow_run_is_found_again_by_its_tag_from_a_new_process(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'ml.db'}"
    settings = Settings(tracking="mlflow", tracking_uri=uri, artifact_dir=tmp_path)
    run_tracker(settings, RUN).log_metrics([(1, {"x": 1})])
    tracking._clients.clear()  # as if another worker process logged next
    run_tracker(settings, RUN).log_metrics([(2, {"x": 2})])
    other = TrackedRun(7, "spin", datetime(2026, 5, 5, tzinfo=timezone.utc))  # run 7 of another database
    run_tracker(settings, other).log_metrics([(1, {"x": 9})])
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("autodidact").experiment_id])
    assert len(runs) == 2
    mine = next(r for r in runs if r.data.tags["autodidact_run_key"] == RUN.key)
    assert [m.value for m in client.get_metric_history(mine.info.run_id, "x")] == [1.0, 2.0]


def test_tensorboard_event_files_hold_scalars_text_and_the_plot(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = Settings(tracking="tensorboard", tensorboard_dir=str(tmp_path / "tb"), artifact_dir=tmp_path)
    _log_everything(run_tracker(settings, RUN))
    run_tracker(settings, RUN).finish("succeeded")
    (logdir,) = (tmp_path / "tb").iterdir()
    assert logdir.name.startswith("run-7-spin-")
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    assert [(e.step, round(e.value, 4)) for e in acc.Scalars("train/loss")] == [(1, 0.69), (2, 0.5), (3, 0.3)]
    assert acc.Scalars("eval/prompt_strict_acc")[0].value == pytest.approx(0.25)
    assert acc.Images("accuracy.png")[0].encoded_image_string.startswith(b"\x89PNG")
    assert "params/text_summary" in acc.Tags()["tensors"]


def test_a_broken_tracker_warns_once_and_never_raises(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = Settings(tracking="mlflow,tensorboard", tracking_uri=f"sqlite:///{blocker / 'sub' / 'ml.db'}",
                        tensorboard_dir=str(blocker / "tb"), artifact_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="shared.tracking"):
        for _ in range(3):
            _log_everything(run_tracker(settings, RUN))
        run_tracker(settings, RUN).finish("failed")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, [r.getMessage() for r in warnings]  # one per backend
    assert {w.getMessage().split(" ", 3)[2] for w in warnings} == {"mlflow", "tensorboard"}


def test_a_run_config_overrides_the_deployment_setting(tmp_path):
    settings = Settings(tracking="none", artifact_dir=tmp_path)
    assert not run_tracker(settings, RUN)
    assert [t[0] for t in run_tracker(settings, RUN, "tensorboard").targets] == ["tensorboard"]
    assert not run_tracker(Settings(tracking="mlflow", artifact_dir=tmp_path), RUN, "none")
    assert run_tracker(Settings(tracking="mlflow", artifact_dir=tmp_path), RUN, "").targets[0][1] == \
        f"sqlite:///{(tmp_path / 'tracking' / 'mlflow.db').resolve()}"
