"""The regression rule on made-up evaluations: a real drop, noise, a collapse into junk."""
from __future__ import annotations

from services.judging.evaluation import aggregate
import dataclasses

from services.judging.regression import regression_verdict as _verdict
from services.methods.base import TrainerFields

# the gate's ceilings as a run gets them by default
GATE = {f.name: f.default for f in dataclasses.fields(TrainerFields)
        if f.name in ("max_degenerate_rate", "max_limit_rate_rise")}


def regression_verdict(before, after, **kw):
    return _verdict(before, after, **{**GATE, **kw})

LOWER = [{"id": "change_case:english_lowercase", "kwargs": {}}]


def evaluation(passing: int, n: int = 160, response_fail: str = "Not Lower", finish: str = "stop") -> dict:
    return aggregate([{"prompt_id": i, "prompt": "write in lowercase about bees",
                       "response": "all lower" if i < passing else response_fail, "constraints": LOWER,
                       "finish_reason": "stop" if i < passing else finish} for i in range(n)])


def test_a_drop_beyond_the_interval_is_a_regression():
    v = regression_verdict(evaluation(80), evaluation(50))
    assert v["regressed"] and "fell by 0.188" in v["reasons"][0] and "30 prompts lost" in v["reasons"][0]


def test_noise_and_gains_are_not():
    assert not regression_verdict(evaluation(80), evaluation(78))["regressed"]
    assert not regression_verdict(evaluation(80), evaluation(95))["regressed"]
    assert not regression_verdict(None, evaluation(10))["regressed"]


def test_collapse_into_junk_is_a_regression_even_at_equal_accuracy():
    before = evaluation(40, response_fail="Bees Buzz")
    after = evaluation(40, response_fail="Bees 𒃐𒄯slotBox slotBoxslotBox", finish="length")
    v = regression_verdict(before, after)
    assert v["regressed"] and len(v["reasons"]) == 2
    assert "degenerate" in v["reasons"][0] and "token limit rose from 0% to 75%" in v["reasons"][1]
    assert not regression_verdict(before, after, max_degenerate_rate=0.9, max_limit_rate_rise=1.0)["regressed"]


def test_a_start_that_already_rambles_is_not_held_against_the_round():
    junk = "Bees 𒃐𒄯slotBox slotBoxslotBox"
    before = evaluation(40, response_fail=junk)
    after = evaluation(40, response_fail=junk)
    assert before["degenerate_rate"] == 0.75 and not regression_verdict(before, after)["regressed"]


def test_too_few_prompts_cannot_show_an_accuracy_regression():
    assert not regression_verdict(evaluation(8, n=8), evaluation(0, n=8))["regressed"]
    assert regression_verdict(evaluation(30, n=30), evaluation(0, n=30))["regressed"]


def cut_at_limit(k: int, n: int) -> dict:
    """An evaluation of n passing answers of which the first k ran into the token limit."""
    return aggregate([{"prompt_id": i, "prompt": "write in lowercase about bees", "response": "all lower",
                       "constraints": LOWER, "finish_reason": "length" if i < k else "stop"} for i in range(n)])


def test_a_slow_drift_is_caught_against_the_start():
    # each round adds 4 points of answers cut at the limit: no single step passes the 10-point
    # ceiling, the third round is 12 points past the start
    start, r1, r2, r3 = (cut_at_limit(k, 100) for k in (0, 4, 8, 12))
    assert not regression_verdict(start, r1, start=start)["regressed"]
    assert not regression_verdict(r1, r2, start=start)["regressed"]
    v = regression_verdict(r2, r3, start=start)
    assert v["regressed"] and v["reasons"] == ["since the run's start: answers cut at the token limit rose from 0% to 12%"]
    assert v["paired_start"]["n_paired"] == 100
    assert not regression_verdict(r2, r3)["regressed"]  # without the start, the step alone passes


def test_the_start_is_not_counted_twice():
    v = regression_verdict(evaluation(80), evaluation(50), start=evaluation(80))
    assert len(v["reasons"]) == 1 and v["paired_start"] is None


def test_the_default_ceiling_catches_the_drift_a_self_rewarding_run_passed():
    # docs/results.md: answers cut at the limit 17 % at the start, 32 % after round 3, with accuracy
    # level; the earlier 25-point ceiling adopted that round
    start, r2, r3 = (cut_at_limit(k, 200) for k in (34, 42, 64))
    assert not regression_verdict(start, r2)["regressed"]
    assert regression_verdict(r2, r3, start=start)["reasons"] == [
        "answers cut at the token limit rose from 21% to 32%",
        "since the run's start: answers cut at the token limit rose from 17% to 32%"]
    assert not regression_verdict(r2, r3, start=start, max_limit_rate_rise=0.25)["regressed"]


def test_round_one_is_judged_against_the_policy_it_made_and_the_start():
    """Self-Rewarding's round 1 trains from M1, which round 1 made and evaluated (`eval_policy`): the
    gate compares the round's DPO with M1 and, since the run's start, with θ0."""
    from services.gateway.conductor import _policy_eval, _start_eval
    from shared.models import Round

    start, m1, after = evaluation(80), evaluation(70), evaluation(68)
    r1 = Round(run_id=1, number=1, metrics={"eval_base": start, "eval_policy": m1, "eval": after},
               policy_version_id=5, produced_version_id=6)
    r2 = Round(run_id=1, number=2, metrics={"eval": evaluation(75)}, policy_version_id=6, produced_version_id=7)
    assert _policy_eval([r1, r2], r1) is m1 and _start_eval([r1, r2]) is start
    assert _policy_eval([r1, r2], r2) is after  # round 2 trains from round 1's version
    plain = Round(run_id=1, number=1, metrics={"eval_base": start, "eval": after}, policy_version_id=1,
                  produced_version_id=2)
    assert _policy_eval([plain], plain) is start  # a round 1 that trains from the base
    v = regression_verdict(_policy_eval([r1], r1), after, start=start)
    assert v["paired"]["prompt_strict_acc"]["lost"] == 2 and v["paired_start"]["prompt_strict_acc"]["lost"] == 12
