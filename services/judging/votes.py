"""Majority votes over sampled judgments (SPaR samples the refiner's verdict several times).

Unparseable votes (None) abstain. An even split is undecided (None): SPaR discards such
responses rather than breaking the tie, since a coin flip would put noise into the pairs.
"""
from __future__ import annotations


def majority(votes: list[bool | None]) -> bool | None:
    """True/False by strict majority of the parsed votes; None on a tie or with no parsed vote."""
    yes = sum(1 for v in votes if v is True)
    no = sum(1 for v in votes if v is False)
    if yes == no:
        return None
    return yes > no
