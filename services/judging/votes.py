"""Majority votes over sampled judgments (an LLM judge asked several times about one response).

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


def verdict(votes: list[bool | None], texts: list[str]) -> tuple[bool | None, float, str]:
    """One judged response from its votes and their texts: (majority, fraction of parsed votes
    that say yes — 0.0 when none parsed, the text to act on — the first 'no' vote's, else the first)."""
    parsed = [v for v in votes if v is not None]
    reason = next((t for t, v in zip(texts, votes) if v is False), texts[0] if texts else "")
    return majority(votes), (sum(parsed) / len(parsed) if parsed else 0.0), reason or ""


def majorities(judgments: list[dict]) -> dict[int, bool | None]:
    """Per sample: the majority of its votes. judgments: [{"sample_id", "passed"}]."""
    votes: dict[int, list] = {}
    for j in judgments:
        votes.setdefault(j["sample_id"], []).append(j["passed"])
    return {sid: majority(vs) for sid, vs in votes.items()}
