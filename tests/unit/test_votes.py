"""Majority vote over sampled verdicts."""
from __future__ import annotations

import pytest

from services.judging.votes import majority


@pytest.mark.parametrize("votes,result", [
    ([True, True, False], True),
    ([False, False, True, None, None], False),
    ([True, False], None),                 # even split: undecided
    ([True, False, None], None),           # None abstains, leaving a tie
    ([None, None], None),
    ([], None),
    ([None, True], True),
    ([True, True, False, False, True], True),
])
def test_majority(votes, result):
    assert majority(votes) is result


@pytest.mark.parametrize("votes,texts,expected", [
    ([True, False, False], ["ok", "bad a", "bad b"], (False, 1 / 3, "bad a")),  # the first 'no' is acted on
    ([True, True, None], ["y1", "y2", "?"], (True, 1.0, "y1")),                # no 'no': the first text
    ([None, None], ["?", "??"], (None, 0.0, "?")),                             # nothing parsed
    ([], [], (None, 0.0, "")),
])
def test_verdict_summarises_votes(votes, texts, expected):
    from services.judging.votes import verdict

    assert verdict(votes, texts) == expected


def test_majorities_per_sample():
    from services.judging.votes import majorities

    judgments = [{"sample_id": 1, "passed": True}, {"sample_id": 1, "passed": False}, {"sample_id": 1, "passed": False},
                 {"sample_id": 2, "passed": True}, {"sample_id": 3, "passed": None}]
    assert majorities(judgments) == {1: False, 2: True, 3: None}
