"""Judge quality: how often the rubric judge and the refiner judge agree with the verifier.

For each held-out prompt we judge its gold response (which passes the verifier) and the model's
own sampled answers (labelled pass/fail by the verifier). The rubric judge is scored by pairwise
accuracy (does a passing response score above a failing one of the same prompt?), the refiner by
verdict accuracy (does its majority yes/no match the verifier?). A model that cannot judge itself
shows up here as accuracy near 0.5 or many unparsed judgments — before a Self-Rewarding or SPaR run
spends hours on its own noise.

The report also gives each judge's parseable rate (share of votes that parse) and, per IFEval
instruction type, the refiner's verdict accuracy and the rubric's pairwise accuracy over the prompts
that carry that type — where a judge fails is as useful as how often.

Judge gating (a self-judged round measuring its judge before trusting it) calls this on a probe of
*training* prompts; the CLI's default probe is the held-out file, which is only measured, never
trained on.

Takes a generation backend and a model reference, so it runs on any backend; nothing is stored.
"""
from __future__ import annotations

from services.judging import evaluation
from services.judging.refiner import judge_messages, parse_verdict
from services.judging.rubric import mean_score, parse_score, rubric_messages
from services.judging.verifier import verify
from services.judging.votes import majority


def judge_agreement(items: list[dict], *, backend, model, samples_per_prompt: int = 2, votes: int = 3,
                    max_new_tokens: int = 192, seed: int = 0, judges: tuple[str, ...] = ("rubric", "refiner"),
                    answer_model=None) -> dict:
    """items: prompt items with `prompt` (text), `constraints` and `reference`. `model` judges the
    answers that `answer_model` (default: `model`) samples, besides each item's reference.

    Returns {"rubric": pairwise accuracy report, "refiner": verdict accuracy report,
             "responses": how many were judged, "unparsed": {"rubric": n, "refiner": n},
             "parseable": {"rubric": rate, "refiner": rate}, "by_type": {id: {"rubric", "refiner"}}}.
    `judges` limits which judges are asked (the other's report is then empty).
    """
    from services.generation.base import SamplingParams

    chats = [[{"role": "user", "content": it["prompt"]}] for it in items]
    sampled = backend.generate(chats, answer_model or model, SamplingParams(n=samples_per_prompt, temperature=0.9,
                                                            max_new_tokens=max_new_tokens, seed=seed))
    responses: list[tuple[int, str, bool]] = []  # (item index, text, verifier strict pass)
    for i, (it, outs) in enumerate(zip(items, sampled)):
        for text in ([it["reference"]] if it.get("reference") else []) + [c.text for c in outs]:
            responses.append((i, text, verify(text, it["constraints"], it["prompt"]).strict))
    judge_params = SamplingParams(n=votes, temperature=0.7, max_new_tokens=max_new_tokens, seed=seed + 1)
    none = [[] for _ in responses]
    rubric_out = backend.generate([rubric_messages(chats[i], t) for i, t, _ in responses], model, judge_params) \
        if "rubric" in judges else none
    refiner_out = backend.generate([judge_messages(chats[i], t) for i, t, _ in responses], model, judge_params) \
        if "refiner" in judges else none
    groups: dict[int, list] = {}
    verdicts: list[tuple[int, bool | None, bool]] = []
    unparsed, total = {"rubric": 0, "refiner": 0}, {"rubric": 0, "refiner": 0}
    for (i, _, ok), r_votes, f_votes in zip(responses, rubric_out, refiner_out):
        scores = [parse_score(c.text) for c in r_votes]
        marks = [parse_verdict(c.text) for c in f_votes]
        unparsed["rubric"] += sum(s is None for s in scores)
        unparsed["refiner"] += sum(m is None for m in marks)
        total["rubric"], total["refiner"] = total["rubric"] + len(scores), total["refiner"] + len(marks)
        groups.setdefault(i, []).append((ok, mean_score(scores)))
        verdicts.append((i, majority(marks), ok))
    by_type: dict[str, dict] = {}
    for ident in sorted({c["id"] for it in items for c in it["constraints"]}):
        has = {i for i, it in enumerate(items) if any(c["id"] == ident for c in it["constraints"])}
        by_type[ident] = {
            "rubric": evaluation.rubric_pairwise_accuracy([g for i, g in groups.items() if i in has]),
            "refiner": evaluation.verdict_accuracy([(v, ok) for i, v, ok in verdicts if i in has])}
    rubric = evaluation.rubric_pairwise_accuracy(list(groups.values()))
    refiner = evaluation.verdict_accuracy([(v, ok) for _, v, ok in verdicts])
    return {"rubric": {**rubric, "ci95": _rubric_interval(groups)},
            "refiner": {**refiner, "balanced_ci95": _verdict_interval(verdicts)},
            "responses": len(responses), "passing": sum(ok for _, _, ok in responses), "unparsed": unparsed,
            "parseable": {k: (1 - unparsed[k] / total[k]) if total[k] else None for k in total},
            "by_type": by_type}


def _rubric_interval(groups: dict[int, list]) -> list | None:
    """95 % interval of the pairwise accuracy, resampling prompts (a prompt's pairs share answers)."""
    from services.judging.intervals import ratio_interval

    per = [evaluation.rubric_pairwise_accuracy([g]) for g in groups.values()]
    ci = ratio_interval([r["correct"] + 0.5 * r["ties"] for r in per], [r["pairs"] for r in per])
    return None if ci["low"] is None else [round(ci["low"], 3), round(ci["high"], 3)]


def _verdict_interval(verdicts: list[tuple[int, bool | None, bool]]) -> list | None:
    """95 % interval of the refiner's balanced accuracy, resampling prompts."""
    from services.judging.intervals import balanced_accuracy_interval

    per: dict[int, list] = {}
    for i, verdict, truth in verdicts:
        per.setdefault(i, []).append((verdict, truth))
    counts = [evaluation.verdict_accuracy(group) for group in per.values()]
    ci = balanced_accuracy_interval([(c["tp"], c["fn"], c["tn"], c["fp"]) for c in counts])
    return None if ci["low"] is None else [round(ci["low"], 3), round(ci["high"], 3)]
