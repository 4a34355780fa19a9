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
