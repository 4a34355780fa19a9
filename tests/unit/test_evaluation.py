"""Evaluation aggregates, the run plot and judge-agreement numbers, on hand-made tables."""
from __future__ import annotations

import io

import pytest

from services.judging.evaluation import aggregate, by_instruction, plot_run, rubric_pairwise_accuracy, verdict_accuracy

LOWER = {"id": "change_case:english_lowercase", "kwargs": {}}
NO_COMMA = {"id": "punctuation:no_comma", "kwargs": {}}
TITLE = {"id": "detectable_format:title", "kwargs": {}}

TABLE = [
    # response, constraints: strict per instruction / loose per instruction
    {"response": "the bees make sweet honey in the summer", "constraints": [LOWER, NO_COMMA]},  # T T / T T
    {"response": "Sure!\nthe bees, the wasps and the ants all live together in big groups\nok, bye",
     "constraints": [LOWER, NO_COMMA]},                                          # F F / T F
    {"response": "<<Bees>> Bees fly", "constraints": [TITLE]},                  # T / T
    {"response": "Unconstrained answer here", "constraints": None},            # length only
]


def test_aggregate_on_a_hand_made_table():
    metrics = aggregate(TABLE, judge_scores=[5.0, None, 3.0, 4.0])
    assert metrics["n"] == 3 and metrics["n_responses"] == 4
    assert metrics["prompt_strict_acc"] == pytest.approx(2 / 3)
    assert metrics["prompt_loose_acc"] == pytest.approx(2 / 3)
    assert metrics["instruction_strict_acc"] == pytest.approx(3 / 5)
    assert metrics["instruction_loose_acc"] == pytest.approx(4 / 5)
    assert metrics["mean_judge_score"] == pytest.approx(4.0) and metrics["n_judged"] == 3
    assert metrics["mean_response_words"] == pytest.approx((8 + 16 + 3 + 3) / 4)


def test_per_instruction_counts_and_their_change():
    metrics = aggregate(TABLE)
    # strict / loose passes and count per instruction type (see the table's comments)
    assert metrics["per_instruction"] == {LOWER["id"]: [1, 2, 2], NO_COMMA["id"]: [1, 1, 2], TITLE["id"]: [1, 1, 1]}
    fixed = aggregate([{**TABLE[0]}, {"response": "the bees and the wasps", "constraints": [LOWER, NO_COMMA]},
                       {"response": "Bees fly", "constraints": [TITLE]}])
    rows = {r["instruction"]: r for r in by_instruction(metrics, fixed)}
    assert rows[LOWER["id"]] == {"instruction": LOWER["id"], "n": 2, "before": 0.5, "after": 1.0, "change": 1}
    assert rows[TITLE["id"]]["change"] == -1 and rows[TITLE["id"]]["after"] == 0.0
    assert by_instruction(metrics, fixed)[0]["instruction"] == TITLE["id"]  # largest loss first
    assert by_instruction({}, metrics)[0]["before"] is None


def test_aggregate_without_judge_scores_or_constraints():
    metrics = aggregate([{"response": "a b", "constraints": []}])
    assert "mean_judge_score" not in metrics
    assert metrics["prompt_strict_acc"] is None and metrics["n"] == 0 and metrics["mean_response_words"] == 2
    assert aggregate([], judge_scores=[])["mean_judge_score"] is None
    with pytest.raises(ValueError, match="align"):
        aggregate(TABLE, judge_scores=[1.0])


def test_plot_run_writes_a_png(tmp_path):
    rounds = [
        {"prompt_strict_acc": 0.2, "prompt_loose_acc": 0.3, "mean_response_words": 80},
        {"prompt_strict_acc": 0.35, "prompt_loose_acc": 0.4, "mean_response_words": 95},
        {"prompt_strict_acc": None, "prompt_loose_acc": 0.5, "mean_response_words": 120},
    ]
    buffer = io.BytesIO()
    plot_run(rounds, buffer)
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    path = tmp_path / "run.png"
    plot_run([{**r, "round": i} for i, r in enumerate(rounds)], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="empty"):
        plot_run([], buffer)


def test_rubric_pairwise_accuracy_counts_ties_as_half():
    groups = [
        [(True, 5.0), (False, 2.0), (False, 5.0)],   # one right, one tie
        [(True, 1.0), (False, 3.0)],                 # wrong
        [(True, None), (False, 1.0)],                # unparsed: skipped
        [(True, 4.0), (True, 3.0)],                  # no failing response: no pair
    ]
    result = rubric_pairwise_accuracy(groups)
    assert (result["pairs"], result["correct"], result["ties"], result["wrong"], result["skipped_unparsed"]) == (3, 1, 1, 1, 1)
    assert result["accuracy"] == pytest.approx(1.5 / 3)
    assert result["accuracy_without_ties"] == pytest.approx(0.5)
    assert rubric_pairwise_accuracy([])["accuracy"] is None


def test_verdict_accuracy_reports_undecided_separately():
    result = verdict_accuracy([(True, True), (False, False), (True, False), (None, True), (False, True)])
    assert (result["n"], result["decided"], result["undecided"]) == (5, 4, 1)
    assert (result["tp"], result["tn"], result["fp"], result["fn"]) == (1, 1, 1, 1)
    assert result["accuracy"] == pytest.approx(0.5)
    assert verdict_accuracy([(None, True)])["accuracy"] is None
