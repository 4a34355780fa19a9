"""Evaluation aggregates for a round, a plot of a run, and judge-quality agreement numbers.

`aggregate` scores one response per held-out prompt the IFEval way: prompt-level accuracy (all
instructions followed) and instruction-level accuracy (each instruction on its own), strict and
loose, each with a 95 % bootstrap interval over prompts (intervals.py), plus the mean judge score,
the mean response length (to catch length blow-up), the degeneration rates of degeneration.py
(echo, token limit, repetition, junk) and, per prompt, the outcome vector that a later paired
comparison needs (`outcomes`: [prompt key, strict, loose, instructions passed strict, loose, count]).
Prompts without constraints count for length, judge score and degeneration but not for accuracy.
`compare` turns two such outcome lists into paired differences with intervals.

`plot_run` draws accuracy and length per round (round 0 = the base model) with matplotlib's Agg
canvas directly, not pyplot, so it is safe in worker threads and needs no display.

The agreement helpers measure a judge against the verifier (the ground truth we have):
- rubric pairwise accuracy: over pairs of responses to one prompt where the verifier passes one
  and fails the other, the fraction where the rubric scores the passing one higher. Ties are
  reported separately and count as half in `accuracy` (so a judge that always ties scores 0.5,
  like a coin); `accuracy_without_ties` leaves them out. Pairs with an unparsed score are skipped.
- refiner verdict accuracy: agreement of the refiner's (majority) verdict with the strict
  verifier verdict; undecided verdicts (None) are reported separately, not counted as wrong.
"""
from __future__ import annotations

import logging
from itertools import product

from services.judging import verifier
from services.judging.degeneration import degeneration_metrics
from services.judging.intervals import paired_difference, ratio_interval

log = logging.getLogger(__name__)


def aggregate(items: list[dict], judge_scores: list[float | None] | None = None) -> dict:
    """items: [{"response": str, "constraints": [{id, kwargs}] | None, "prompt": str (optional),
    "verdict": a Verdict the caller already computed (optional), "prompt_id": a stable key (optional,
    else the position), "finish_reason": "stop" | "length" (optional)}], one per prompt;
    judge_scores: optional, aligned with items (None = unjudged)."""
    if judge_scores is not None and len(judge_scores) != len(items):
        raise ValueError(f"judge_scores has {len(judge_scores)} entries for {len(items)} items; align them")
    outcomes: list[list] = []
    words: list[int] = []
    per_instruction: dict[str, list[int]] = {}  # instruction id -> [strict passed, loose passed, count]
    for position, item in enumerate(items):
        response = item.get("response") or ""
        words.append(verifier.count_words(response))
        constraints = item.get("constraints") or []
        if not constraints:
            continue
        verdict = item.get("verdict") or verifier.verify(response, constraints, item.get("prompt", ""))
        outcomes.append([item.get("prompt_id", position), int(verdict.strict), int(verdict.loose),
                         sum(verdict.strict_per_instruction), sum(verdict.loose_per_instruction),
                         len(verdict.strict_per_instruction)])
        for c, strict, loose in zip(constraints, verdict.strict_per_instruction, verdict.loose_per_instruction):
            row = per_instruction.setdefault(c["id"], [0, 0, 0])
            row[0] += int(strict)
            row[1] += int(loose)
            row[2] += 1

    def frac(num: float, den: int) -> float | None:
        return num / den if den else None

    col = lambda k: [o[k] for o in outcomes]  # noqa: E731
    ones = [1] * len(outcomes)
    intervals = {
        "prompt_strict_acc": ratio_interval(col(1), ones), "prompt_loose_acc": ratio_interval(col(2), ones),
        "instruction_strict_acc": ratio_interval(col(3), col(5)),
        "instruction_loose_acc": ratio_interval(col(4), col(5)),
    }
    metrics = {name: iv["estimate"] for name, iv in intervals.items()}
    metrics["ci95"] = {name: [iv["low"], iv["high"]] for name, iv in intervals.items()}
    metrics.update({
        "mean_response_words": frac(sum(words), len(words)),
        "n": len(outcomes),
        "n_responses": len(items),
        **degeneration_metrics([{"response": i.get("response") or "", "prompt": i.get("prompt") or "",
                                 "finish_reason": i.get("finish_reason"), "constraints": i.get("constraints")}
                                for i in items]),
        "outcomes": outcomes,
        "per_instruction": dict(sorted(per_instruction.items())),
    })
    if judge_scores is not None:
        parsed = [s for s in judge_scores if s is not None]
        metrics["mean_judge_score"] = frac(sum(parsed), len(parsed))
        metrics["n_judged"] = len(parsed)
    return metrics


def compare(before: dict, after: dict) -> dict:
    """Paired after − before differences of prompt- and instruction-level strict and loose accuracy
    over the prompts both evaluations share (matched by prompt key), each with a 95 % interval."""
    b = {o[0]: o for o in before.get("outcomes") or []}
    a = {o[0]: o for o in after.get("outcomes") or []}
    keys = [k for k in b if k in a]
    out = {"n_paired": len(keys)}
    for name, num, den in (("prompt_strict_acc", 1, None), ("prompt_loose_acc", 2, None),
                           ("instruction_strict_acc", 3, 5), ("instruction_loose_acc", 4, 5)):
        pick = lambda o: (o[num], 1 if den is None else o[den])  # noqa: E731
        out[name] = paired_difference([pick(b[k]) for k in keys], [pick(a[k]) for k in keys])
    return out


def by_instruction(before: dict, after: dict) -> list[dict]:
    """Per instruction type, strict pass rates before and after (from `aggregate`'s
    `per_instruction`), largest loss first: where a gain or a loss came from."""
    b, a = before.get("per_instruction") or {}, after.get("per_instruction") or {}
    rows = []
    for iid in sorted(set(b) | set(a)):
        nb, na = (b.get(iid) or [0, 0, 0]), (a.get(iid) or [0, 0, 0])
        rows.append({"instruction": iid, "n": max(nb[2], na[2]),
                     "before": nb[0] / nb[2] if nb[2] else None, "after": na[0] / na[2] if na[2] else None,
                     "change": (na[0] - nb[0]) if nb[2] == na[2] else None})
    return sorted(rows, key=lambda r: (r["change"] if r["change"] is not None else 0, r["instruction"]))


def rubric_pairwise_accuracy(groups: list[list[tuple[bool, float | None]]]) -> dict:
    """groups: per prompt, (verifier pass, rubric score) for each of its responses."""
    correct = ties = wrong = skipped = 0
    for group in groups:
        passing = [score for ok, score in group if ok]
        failing = [score for ok, score in group if not ok]
        for good, bad in product(passing, failing):
            if good is None or bad is None:
                skipped += 1
            elif good > bad:
                correct += 1
            elif good == bad:
                ties += 1
            else:
                wrong += 1
    pairs = correct + ties + wrong
    return {
        "pairs": pairs,
        "correct": correct,
        "ties": ties,
        "wrong": wrong,
        "skipped_unparsed": skipped,
        "accuracy": (correct + 0.5 * ties) / pairs if pairs else None,
        "accuracy_without_ties": correct / (correct + wrong) if correct + wrong else None,
    }


def verdict_accuracy(pairs: list[tuple[bool | None, bool]]) -> dict:
    """pairs: (refiner verdict, verifier strict pass) per judged response. Besides plain accuracy,
    `balanced_accuracy` is the mean of the true-positive and true-negative rates, so a judge that
    always says "yes" to a set that mostly passes does not look good."""
    counts = {"tp": 0, "tn": 0, "fp": 0, "fn": 0}
    undecided = 0
    for verdict, truth in pairs:
        if verdict is None:
            undecided += 1
            continue
        key = ("t" if verdict == truth else "f") + ("p" if verdict else "n")
        counts[key] += 1
    decided = sum(counts.values())
    pos, neg = counts["tp"] + counts["fn"], counts["tn"] + counts["fp"]
    rates = [counts["tp"] / pos if pos else None, counts["tn"] / neg if neg else None]
    return {
        "n": len(pairs),
        "decided": decided,
        "undecided": undecided,
        "accuracy": (counts["tp"] + counts["tn"]) / decided if decided else None,
        "balanced_accuracy": sum(rates) / 2 if None not in rates else None,
        **counts,
    }


def eval_series(rounds: list) -> list[dict]:
    """Held-out metrics per round (Round rows, in order) for plotting: round 0 is the base
    (measured in round 1)."""
    series = []
    if rounds and "eval_base" in rounds[0].metrics:
        series.append({"round": 0, **rounds[0].metrics["eval_base"]})
    series += [{"round": r.number, **r.metrics["eval"]} for r in rounds if "eval" in r.metrics]
    return series


def plot_run(rounds_metrics: list[dict], path_or_buffer) -> None:
    """A PNG with prompt-level accuracy (strict and loose) and mean response words per round.
    Each dict is a round's metrics (as from `aggregate`), optionally with "round"; without it the
    list index is the round number (index 0 = the base model)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rounds_metrics:
        raise ValueError("rounds_metrics is empty; evaluate at least the base model (round 0) first")
    rounds = [m.get("round", i) for i, m in enumerate(rounds_metrics)]

    def series(key: str) -> list[float]:
        return [float("nan") if m.get(key) is None else float(m[key]) for m in rounds_metrics]

    fig = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    acc, length = fig.subplots(1, 2)
    for key, label, style in [
        ("prompt_strict_acc", "prompt strict", "o-"),
        ("prompt_loose_acc", "prompt loose", "s--"),
        ("instruction_strict_acc", "instruction strict", "^:"),
    ]:
        if any(m.get(key) is not None for m in rounds_metrics):
            acc.plot(rounds, series(key), style, label=label)
    acc.set(title="Verifiable-instruction accuracy", xlabel="round (0 = base)", ylabel="accuracy", ylim=(0, 1))
    acc.legend(loc="lower right", fontsize=8)
    length.plot(rounds, series("mean_response_words"), "o-", color="tab:purple")
    length.set(title="Mean response length", xlabel="round (0 = base)", ylabel="words")
    for ax in (acc, length):
        ax.set_xticks(rounds)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_or_buffer, format="png")
