"""The stopping rule of continuous runs (pure)."""
import pytest

from services.gateway.conductor import stop_rule_met


@pytest.mark.parametrize("rule,accs,done,stop", [
    ({"max_rounds": 3}, [], 2, False),
    ({"max_rounds": 3}, [], 3, True),
    ({}, [0.1, 0.2, 0.3], 3, False),  # no patience: only max_rounds (default 100) stops it
    ({"patience": 2, "delta": 0.01}, [0.2, 0.3, 0.305, 0.309], 4, True),  # no gain ≥ δ for 2 rounds
    ({"patience": 2, "delta": 0.01}, [0.2, 0.3, 0.305, 0.32], 4, False),
    ({"patience": 2}, [0.5, 0.4], 2, False),  # not enough history yet
    ({"patience": 1}, [0.5, 0.4], 2, True),
])
def test_stop_rule(rule, accs, done, stop):
    assert stop_rule_met(rule, accs, done) is stop
