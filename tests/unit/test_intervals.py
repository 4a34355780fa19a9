"""Bootstrap intervals and paired differences on tables with known answers."""
from __future__ import annotations

import math

import pytest

from services.judging.evaluation import aggregate, compare
from services.judging.intervals import (
    balanced_accuracy_interval, mean_interval, paired_difference, ratio_interval, significantly_better, significantly_worse,
)


def test_constant_outcomes_have_a_point_interval():
    assert mean_interval([1] * 50) == {"estimate": 1.0, "low": 1.0, "high": 1.0, "n": 50}
    assert mean_interval([0] * 50)["high"] == 0.0


def test_interval_width_matches_the_normal_approximation():
    # p = 0.5, n = 400: 1.96 * sqrt(.25 / 400) = 0.049
    iv = mean_interval([1, 0] * 200)
    assert iv["estimate"] == 0.5
    assert iv["low"] == pytest.approx(0.5 - 0.049, abs=0.008)
    assert iv["high"] == pytest.approx(0.5 + 0.049, abs=0.008)
    # more prompts, a narrower interval
    assert (mean_interval([1, 0] * 50)["high"] - mean_interval([1, 0] * 50)["low"]) > (iv["high"] - iv["low"])


def test_ratio_interval_resamples_prompts_not_instructions():
    # one prompt with 3 instructions all passed, one with 1 failed: ratio 3/4
    iv = ratio_interval([3, 0], [3, 1])
    assert iv["estimate"] == 0.75 and 0.0 <= iv["low"] <= iv["high"] <= 1.0


def test_empty_and_misaligned_inputs():
    assert ratio_interval([], [])["estimate"] is None
    assert ratio_interval([0, 0], [0, 0])["estimate"] is None
    with pytest.raises(ValueError, match="aligned"):
        ratio_interval([1, 2], [1])
    with pytest.raises(ValueError, match="same items"):
        paired_difference([(1, 1)], [])


def test_paired_difference_detects_a_consistent_gain_that_separate_intervals_would_not():
    before = [(0, 1)] * 40 + [(1, 1)] * 60
    after = [(1, 1)] * 12 + [(0, 1)] * 28 + [(1, 1)] * 60  # 12 prompts gained, none lost
    d = paired_difference(before, after)
    assert d["difference"] == pytest.approx(0.12) and d["gained"] == 12 and d["lost"] == 0
    assert d["low"] > 0 and significantly_better(d) and not significantly_worse(d)
    # the two separate 95 % intervals overlap
    assert mean_interval([b for b, _ in before])["high"] > mean_interval([a for a, _ in after])["low"]


def test_paired_difference_of_noise_straddles_zero():
    before = [(1, 1), (0, 1)] * 50
    after = [(0, 1), (1, 1)] * 50  # every prompt changed, no net change
    d = paired_difference(before, after)
    assert d["difference"] == 0 and d["low"] < 0 < d["high"]
    assert not significantly_better(d) and not significantly_worse(d)


def test_aggregate_carries_intervals_outcomes_and_compare_pairs_them():
    lower = [{"id": "change_case:english_lowercase", "kwargs": {}}]
    items = [{"prompt_id": i, "response": "all lower" if i % 2 else "Not Lower", "constraints": lower,
              "prompt": "write in lowercase", "finish_reason": "stop"} for i in range(30)]
    before = aggregate(items)
    assert before["prompt_strict_acc"] == 0.5 and before["ci95"]["prompt_strict_acc"][0] < 0.5
    assert len(before["outcomes"]) == 30 and before["limit_rate"] == 0 and before["echo_rate"] == 0
    better = aggregate([{**it, "response": "all lower"} for it in items])
    diff = compare(before, better)
    assert diff["n_paired"] == 30
    assert diff["prompt_strict_acc"]["difference"] == pytest.approx(0.5)
    assert significantly_better(diff["prompt_strict_acc"])
    assert not math.isnan(diff["instruction_loose_acc"]["difference"])


def test_balanced_accuracy_interval():
    # per prompt (tp, fn, tn, fp): always right, always "yes", and a judge right on 3 of 4 prompts
    assert balanced_accuracy_interval([(1, 0, 1, 0)] * 20) == {"estimate": 1.0, "low": 1.0, "high": 1.0, "n": 20}
    always_yes = balanced_accuracy_interval([(1, 0, 0, 1)] * 20)
    assert (always_yes["estimate"], always_yes["low"], always_yes["high"]) == (0.5, 0.5, 0.5)
    mixed = balanced_accuracy_interval([(1, 0, 1, 0)] * 30 + [(0, 1, 0, 1)] * 10)
    assert mixed["estimate"] == 0.75 and 0.6 < mixed["low"] < 0.75 < mixed["high"] < 0.9
    # a tenth of the prompts: a much wider interval
    wide = balanced_accuracy_interval([(1, 0, 1, 0)] * 3 + [(0, 1, 0, 1)] * 1)
    assert wide["high"] - wide["low"] > 2 * (mixed["high"] - mixed["low"]) * 0.8
    # no failing (or no passing) response anywhere: balanced accuracy is undefined
    assert balanced_accuracy_interval([(2, 1, 0, 0)] * 5)["estimate"] is None
    assert balanced_accuracy_interval([])["estimate"] is None
    with pytest.raises(ValueError, match=">= 0"):
        balanced_accuracy_interval([(1, -1, 0, 0)])
