"""Structured logs (shared/logs.py) and in-process metrics (shared/metrics.py): the JSON line
format with the bound ids, the text format, the level rule, and what a task run in-process (the
embedded mode) and the services record."""
from __future__ import annotations

import io
import json
import logging

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared import logs, metrics
from shared.config import Settings


def _logger(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(f"test.observability.{fmt}")
    logger.handlers[:] = [logs.make_handler(fmt, stream)]
    logger.propagate, logger.level = False, logging.DEBUG
    return logger, stream


def test_json_lines_carry_the_bound_ids():
    logger, stream = _logger("json")
    with logs.log_context(run_id=4, round=2):
        with logs.log_context(stage="train", task_id=17, unknown=None):
            logger.warning("step %d of %d", 3, 10)
        logger.info("between stages")
    logger.info("outside")
    try:
        raise KeyError("prompt_ids")
    except KeyError:
        with logs.log_context(task_id=9):
            logger.exception("failed")
    first, second, third, fourth = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "step 3 of 10" and first["level"] == "WARNING"
    assert first["logger"] == "test.observability.json"
    assert first["timestamp"].endswith("+00:00") and "T" in first["timestamp"]
    assert {k: first[k] for k in logs.FIELDS} == {"run_id": 4, "round": 2, "stage": "train", "task_id": 17}
    assert second["run_id"] == 4 and second["round"] == 2 and "stage" not in second and "task_id" not in second
    assert set(third) == {"timestamp", "level", "logger", "message"}  # unknown ids are left out, not null
    assert fourth["task_id"] == 9 and "KeyError: 'prompt_ids'" in fourth["exc_info"]
    assert logs.current_context() == {}


def test_an_id_passed_with_extra_wins_over_the_context():
    logger, stream = _logger("json")
    with logs.log_context(run_id=1, round=1):
        logger.info("x", extra={"round": 5})
    line = json.loads(stream.getvalue())
    assert line["run_id"] == 1 and line["round"] == 5


def test_text_lines_show_the_known_ids():
    logger, stream = _logger("text")
    with logs.log_context(run_id=4, round=2, stage="generate", task_id=17):
        logger.info("hello")
    logger.info("bare")
    with_ids, bare = stream.getvalue().splitlines()
    assert with_ids.endswith("INFO test.observability.text [run=4 round=2 stage=generate task=17]: hello")
    assert bare.endswith("INFO test.observability.text: bare")


def test_configure_logging_level_rule_and_one_handler(monkeypatch):
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        logs.configure_logging(default="WARNING", settings=Settings(log_format="json"))
        assert root.level == logging.WARNING  # no setting, no option: the command's default
        logs.configure_logging(default="WARNING", settings=Settings(log_level="debug"))
        assert root.level == logging.DEBUG  # the setting beats the default
        logs.configure_logging("ERROR", settings=Settings(log_level="debug"))
        assert root.level == logging.ERROR  # a command-line option beats the setting
        ours = [h for h in root.handlers if getattr(h, "_autodidact", False)]
        assert len(ours) == 1 and not isinstance(ours[0].formatter, logs.JsonFormatter)
    finally:
        root.handlers[:] = before[1]
        root.setLevel(before[0])
    with pytest.raises(ValueError):
        Settings(log_format="yaml")


def _value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tasks_run_in_process_are_counted_and_carry_ids():
    seen = {}
    before_ok = _value("autodidact_tasks_total", queue="judging", task="judging.verify_shard", outcome="success")
    before_bad = _value("autodidact_tasks_total", queue="judging", task="judging.verify_shard", outcome="failure")
    with metrics.inline_task("judging.verify_shard", (12,)):
        seen.update(logs.current_context())
    with pytest.raises(RuntimeError), metrics.inline_task("judging.verify_shard", (13,)):
        raise RuntimeError("boom")
    assert seen == {"task": "judging.verify_shard", "task_id": 12}
    assert logs.current_context() == {}
    assert _value("autodidact_tasks_total", queue="judging", task="judging.verify_shard",
                  outcome="success") == before_ok + 1
    assert _value("autodidact_tasks_total", queue="judging", task="judging.verify_shard",
                  outcome="failure") == before_bad + 1


def test_service_numbers_are_exposed_in_prometheus_format():
    metrics.tokens_generated(300, 1.5, role="unit")
    metrics.training_step("sft")
    metrics.training_finished("sft", items=40, seconds=8.0)
    metrics.stage_finished("unit-stage", "done", 0.2)
    metrics.stage_retried("unit-stage")
    metrics.stage_resent("unit-stage", "stale_heartbeat")
    metrics.current_round(991, 4)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}

    def value(family: str, sample: str, **labels) -> float:
        return next(s.value for s in families[family].samples
                    if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("autodidact_generated_tokens", "autodidact_generated_tokens_total", role="unit") >= 300
    assert value("autodidact_generation_tokens_per_second", "autodidact_generation_tokens_per_second",
                 role="unit") == 200
    assert value("autodidact_training_steps", "autodidact_training_steps_total", kind="sft") >= 1
    assert value("autodidact_training_pairs_per_second", "autodidact_training_pairs_per_second", kind="sft") == 5
    assert value("autodidact_stage_seconds", "autodidact_stage_seconds_count", stage="unit-stage", outcome="done") >= 1
    assert value("autodidact_stage_retries", "autodidact_stage_retries_total", stage="unit-stage") >= 1
    assert value("autodidact_stage_resends", "autodidact_stage_resends_total", stage="unit-stage",
                 reason="stale_heartbeat") >= 1
    assert value("autodidact_run_round", "autodidact_run_round", run_id="991") == 4
