"""95 % bootstrap intervals for evaluation metrics, and paired comparisons between two versions.

Held-out accuracy on a few hundred prompts moves by several points from noise alone (at p = 0.3 and
n = 150 the standard error is 3.7 points), so every reported accuracy carries an interval and every
claimed gain a paired one. Everything resamples *prompts* (the unit that was drawn): prompt-level
accuracy is a mean of 0/1 per prompt, instruction-level accuracy a ratio of per-prompt sums (the
instructions of one prompt are not independent), and a paired difference resamples the same prompts
for both versions, which is far tighter than two separate intervals.

Percentile bootstrap with a fixed seed (reproducible), vectorised with numpy: 2,000 resamples of a
few hundred prompts take milliseconds.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def _check(num: Sequence[float], den: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"num and den must be flat and aligned; got shapes {a.shape} and {b.shape}")
    if (b < 0).any() or (a < 0).any():
        raise ValueError("counts must be >= 0")
    return a, b


def _bounds(stats: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


def ratio_interval(num: Sequence[float], den: Sequence[float], *, n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> dict:
    """sum(num) / sum(den) with a percentile interval from resampling the aligned items.
    {"estimate", "low", "high", "n"}; all None when there is nothing to measure."""
    a, b = _check(num, den)
    if len(a) == 0 or b.sum() == 0:
        return {"estimate": None, "low": None, "high": None, "n": int(len(a))}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    da = b[idx].sum(axis=1)
    stats = np.divide(a[idx].sum(axis=1), da, out=np.full(n_boot, np.nan), where=da > 0)
    low, high = _bounds(stats[~np.isnan(stats)], level)
    return {"estimate": float(a.sum() / b.sum()), "low": low, "high": high, "n": int(len(a))}


def mean_interval(values: Sequence[float], **kw) -> dict:
    """Mean of per-item values (e.g. 0/1 prompt passes) with its interval."""
    return ratio_interval(values, [1.0] * len(values), **kw)


def paired_difference(before: Sequence[tuple[float, float]], after: Sequence[tuple[float, float]], *,
                      n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> dict:
    """after − before of a ratio metric on the same items: each entry is (num, den) of one prompt
    (for prompt-level accuracy (pass, 1); for instruction-level (passed, count)). Both versions are
    resampled with the same indices. Returns {"difference", "low", "high", "n", "gained", "lost"}
    where gained / lost count items whose ratio went up / down."""
    if len(before) != len(after):
        raise ValueError(f"paired comparison needs the same items: {len(before)} before, {len(after)} after")
    if not before:
        return {"difference": None, "low": None, "high": None, "n": 0, "gained": 0, "lost": 0}
    bn, bd = _check([x[0] for x in before], [x[1] for x in before])
    an, ad = _check([x[0] for x in after], [x[1] for x in after])
    if bd.sum() == 0 or ad.sum() == 0:
        return {"difference": None, "low": None, "high": None, "n": len(bn), "gained": 0, "lost": 0}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(bn), size=(n_boot, len(bn)))
    bden, aden = bd[idx].sum(axis=1), ad[idx].sum(axis=1)
    ok = (bden > 0) & (aden > 0)
    stats = an[idx][ok].sum(axis=1) / aden[ok] - bn[idx][ok].sum(axis=1) / bden[ok]
    low, high = _bounds(stats, level)
    with np.errstate(invalid="ignore", divide="ignore"):
        rb, ra = bn / np.where(bd > 0, bd, np.nan), an / np.where(ad > 0, ad, np.nan)
    return {"difference": float(an.sum() / ad.sum() - bn.sum() / bd.sum()), "low": low, "high": high,
            "n": int(len(bn)), "gained": int(np.nansum(ra > rb)), "lost": int(np.nansum(ra < rb))}


def balanced_accuracy_interval(counts: Sequence[tuple[int, int, int, int]], *, n_boot: int = N_BOOT,
                               level: float = LEVEL, seed: int = 0) -> dict:
    """Balanced accuracy (mean of the true-positive and true-negative rates) of a yes/no judge, with
    a percentile interval from resampling prompts. counts: per prompt (tp, fn, tn, fp). Resamples
    with no positive or no negative case are left out. {"estimate", "low", "high", "n"}."""
    c = np.asarray(counts, dtype=float).reshape(-1, 4)
    if (c < 0).any():
        raise ValueError("counts must be >= 0")
    none = {"estimate": None, "low": None, "high": None, "n": int(len(c))}
    tot = c.sum(axis=0)
    if len(c) == 0 or tot[0] + tot[1] == 0 or tot[2] + tot[3] == 0:
        return none
    rng = np.random.default_rng(seed)
    s = c[rng.integers(0, len(c), size=(n_boot, len(c)))].sum(axis=1)  # [n_boot, 4]
    pos, neg = s[:, 0] + s[:, 1], s[:, 2] + s[:, 3]
    ok = (pos > 0) & (neg > 0)
    stats = (s[ok, 0] / pos[ok] + s[ok, 2] / neg[ok]) / 2
    low, high = _bounds(stats, level)
    return {"estimate": float((tot[0] / (tot[0] + tot[1]) + tot[2] / (tot[2] + tot[3])) / 2),
            "low": low, "high": high, "n": int(len(c))}


def significantly_worse(paired: dict) -> bool:
    """The whole interval of after − before lies below zero."""
    return paired.get("high") is not None and paired["high"] < 0


def significantly_better(paired: dict) -> bool:
    return paired.get("low") is not None and paired["low"] > 0
