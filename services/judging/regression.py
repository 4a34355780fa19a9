"""Did a round make the model worse? The rule the conductor applies before adopting a round's version.

A round's version is compared with the policy it started from on the same held-out prompts:
- accuracy: the paired 95 % interval of (after − before) prompt-level strict accuracy lies wholly
  below zero — a drop larger than its own noise, not a wobble of one or two prompts. A percentile
  bootstrap on a handful of prompts says nothing, so no rule here fires on fewer than MIN_PAIRED
  held-out prompts (the verdict then says so);
- degeneration: the share of degenerate answers (junk characters or runaway repetition, see
  degeneration.py) rose above `max_degenerate_rate` (and above the starting policy's own share by
  more than 5 points: a raw pretrained base that already rambles is not held against its first
  round), or the share of answers cut at the token limit rose by more than `max_limit_rate_rise` —
  a collapsing model can keep its accuracy for a round while its answers turn to noise.
Either makes the round a regression. What happens then is the run's `on_regression` setting.

The same rules also run against the run's start (its evaluation before round 1) when the round
began from a later version: a slow drift (ReST-EM's answers cut at the limit went 18 → 24 → 28 →
35 % over three rounds, docs/results.md) passes every round-to-round comparison but not the one
with the start. Those reasons say "since the run's start".
Pure: plain metric dicts in (as `evaluation.aggregate` writes them), a verdict out.
"""
from __future__ import annotations

from services.judging.evaluation import compare
from services.judging.intervals import significantly_worse

DEGENERATE_NOISE = 0.05
MIN_PAIRED = 30


def regression_verdict(before: dict | None, after: dict | None, *, max_degenerate_rate: float,
                       max_limit_rate_rise: float, start: dict | None = None) -> dict:
    """{"regressed": bool, "reasons": [str], "paired": compare(before, after) or None,
    "paired_start": compare(start, after) or None}. `start`: the run's start, checked too when it
    is not `before`. Without both evaluations there is nothing to compare: not a regression.
    The two ceilings have no default here: a run's config holds them (TrainerFields)."""
    if not before or not after:
        return {"regressed": False, "reasons": [], "paired": None, "paired_start": None}
    limits = {"max_degenerate_rate": max_degenerate_rate, "max_limit_rate_rise": max_limit_rate_rise}
    paired = compare(before, after)
    if paired["n_paired"] < MIN_PAIRED or (after.get("n_responses") or 0) < MIN_PAIRED:
        return {"regressed": False, "reasons": [], "paired": paired, "paired_start": None,
                "note": f"{paired['n_paired']} paired held-out prompts: too few (< {MIN_PAIRED}) to judge a regression"}
    reasons = _reasons(before, after, paired, **limits)
    paired_start = None
    if start and start != before:
        paired_start = compare(start, after)
        if paired_start["n_paired"] >= MIN_PAIRED:
            reasons += [f"since the run's start: {why}" for why in _reasons(start, after, paired_start, **limits)]
    return {"regressed": bool(reasons), "reasons": reasons, "paired": paired, "paired_start": paired_start}


def _reasons(before: dict, after: dict, paired: dict, *, max_degenerate_rate: float,
             max_limit_rate_rise: float) -> list[str]:
    reasons = []
    strict = paired["prompt_strict_acc"]
    if significantly_worse(strict):
        reasons.append(f"held-out prompt-level strict accuracy fell by {-strict['difference']:.3f} "
                       f"(95 % interval of the change {strict['low']:+.3f} .. {strict['high']:+.3f}, "
                       f"{strict['lost']} prompts lost, {strict['gained']} gained)")
    degenerate, was = after.get("degenerate_rate"), before.get("degenerate_rate") or 0.0
    if degenerate is not None and degenerate > max_degenerate_rate and degenerate - was > DEGENERATE_NOISE:
        reasons.append(f"{degenerate:.0%} of held-out answers are degenerate (junk or runaway repetition), "
                       f"above the ceiling {max_degenerate_rate:.0%}")
    lim_b, lim_a = before.get("limit_rate"), after.get("limit_rate")
    if lim_b is not None and lim_a is not None and lim_a - lim_b > max_limit_rate_rise:
        reasons.append(f"answers cut at the token limit rose from {lim_b:.0%} to {lim_a:.0%}")
    return reasons
