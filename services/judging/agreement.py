"""Judge quality: how often the rubric judge and the refiner judge agree with the verifier.

For each held-out prompt we judge its gold response (which passes the verifier) and the model's
own sampled answers (labelled pass/fail by the verifier). The rubric judge is scored by pairwise
accuracy (does a passing response score above a failing one of the same prompt?), the refiner by
verdict accuracy (does its majority yes/no match the verifier?). A model that cannot judge itself
shows up here as accuracy near 0.5 or many unparsed judgments — before a Self-Rewarding or SPaR run
spends hours on its own noise.

Takes a generation backend and a model reference, so it runs on any backend; nothing is stored.
"""
from __future__ import annotations

from services.judging import evaluation
from services.judging.refiner import judge_messages, parse_verdict
from services.judging.rubric import mean_score, parse_score, rubric_messages
from services.judging.verifier import verify
from services.judging.votes import majority


def judge_agreement(items: list[dict], *, backend, model, samples_per_prompt: int = 2, votes: int = 3,
                    max_new_tokens: int = 192, seed: int = 0) -> dict:
    """items: prompt items with `prompt` (text), `constraints` and `reference`.

    Returns {"rubric": pairwise accuracy report, "refiner": verdict accuracy report,
             "responses": how many were judged, "unparsed": {"rubric": n, "refiner": n}}.
    """
    from services.generation.base import SamplingParams

    chats = [[{"role": "user", "content": it["prompt"]}] for it in items]
    sampled = backend.generate(chats, model, SamplingParams(n=samples_per_prompt, temperature=0.9,
                                                            max_new_tokens=max_new_tokens, seed=seed))
    responses: list[tuple[int, str, bool]] = []  # (item index, text, verifier strict pass)
    for i, (it, outs) in enumerate(zip(items, sampled)):
        for text in [it["reference"]] + [c.text for c in outs]:
            responses.append((i, text, verify(text, it["constraints"], it["prompt"]).strict))
    judge_params = SamplingParams(n=votes, temperature=0.7, max_new_tokens=max_new_tokens, seed=seed + 1)
    rubric_out = backend.generate([rubric_messages(chats[i], t) for i, t, _ in responses], model, judge_params)
    refiner_out = backend.generate([judge_messages(chats[i], t) for i, t, _ in responses], model, judge_params)
    groups: dict[int, list] = {}
    verdicts, unparsed = [], {"rubric": 0, "refiner": 0}
    for (i, _, ok), r_votes, f_votes in zip(responses, rubric_out, refiner_out):
        scores = [parse_score(c.text) for c in r_votes]
        marks = [parse_verdict(c.text) for c in f_votes]
        unparsed["rubric"] += sum(s is None for s in scores)
        unparsed["refiner"] += sum(m is None for m in marks)
        groups.setdefault(i, []).append((ok, mean_score(scores)))
        verdicts.append((majority(marks), ok))
    return {"rubric": evaluation.rubric_pairwise_accuracy(list(groups.values())),
            "refiner": evaluation.verdict_accuracy(verdicts),
            "responses": len(responses), "passing": sum(ok for _, _, ok in responses), "unparsed": unparsed}
