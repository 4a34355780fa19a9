"""Training data that teaches a model to judge, built from verifiable prompts: the verifier is the
teacher where no stronger model exists.

Self-Rewarding starts from a judge that can already score (a 70B model plus seed EFT data); SPaR
first trains its refiner on judgments and refinements written by GPT-4o. A 270M model has neither,
and untrained it writes no parseable judgment at all. Here the model's own samples on *training*
prompts (never held-out ones) are labelled by the IFEval verifier, and the labels are written out
in exactly the formats the judges are parsed with:

- refiner judgments (SPaR): each instruction of the request checked in turn (what the response
  shows about it, then followed or broken), then `Verdict: yes|no` — the verdict follows from the
  checks. Yes and no examples are balanced (the majority class is subsampled), so the judge cannot
  score well by always saying one thing.
- refinements (SPaR): a failing response, its judgment, and a minimal programmatic edit that fixes
  it (refinements.py), kept only when the verifier passes the edit.
- rubric judgments (Self-Rewarding's EFT): the checks as a justification, then `Score: N` where N
  follows from them: 0 for an empty, echoed or degenerate answer, else 1 + 4 x the share of
  instructions followed, rounded down (so 5 means every instruction followed).

Each builder returns SFT examples {"messages", "response"}; `judge_examples` makes all three from
one list of labelled samples.
"""
from __future__ import annotations

import random

from services.curriculum.refinements import refine
from services.judging.refiner import REFINED_MARK, judge_messages, refine_messages
from services.judging.rubric import rubric_messages
from services.judging.verifier_judge import Check
from services.judging.verifier_judge import checks as _checks
from services.judging.verifier_judge import judgment_text, rubric_judgment
from services.judging.verifier_judge import rubric_score as _rubric_score


def _chat(sample: dict) -> list[dict]:
    return sample.get("messages") or [{"role": "user", "content": sample["prompt"]}]


def _prompt_text(sample: dict) -> str:
    return sample.get("prompt") or _chat(sample)[-1]["content"]


def checks(sample: dict) -> list[Check]:
    """One check per constraint of the sample, by the strict verifier."""
    return _checks(sample["response"], sample["constraints"], _prompt_text(sample))


def rubric_score(sample: dict, found: list[Check]) -> int:
    return _rubric_score(sample["response"], found, _prompt_text(sample), sample["constraints"],
                         sample.get("finish_reason"))


def refiner_judgments(samples: list[dict], seed: int = 0) -> list[dict]:
    """Balanced yes/no judgment examples for the refiner."""
    yes, no = [], []
    for s in samples:
        found = checks(s)
        ex = {"messages": judge_messages(_chat(s), s["response"]), "response": judgment_text(found)}
        (yes if all(c.ok for c in found) else no).append(ex)
    rng = random.Random(seed)
    k = min(len(yes), len(no))
    out = rng.sample(yes, k) + rng.sample(no, k)
    rng.shuffle(out)
    return out


def refinement_examples(samples: list[dict]) -> list[dict]:
    """(failed response + its judgment) -> `Refined response:` + a verified minimal fix."""
    out = []
    for s in samples:
        found = checks(s)
        if all(c.ok for c in found):
            continue
        fixed = refine(s["response"], s["constraints"], _prompt_text(s))
        if fixed is None:
            continue
        out.append({"messages": refine_messages(_chat(s), s["response"], judgment_text(found)),
                    "response": f"{REFINED_MARK}\n{fixed}"})
    return out


def rubric_examples(samples: list[dict]) -> list[dict]:
    out = []
    for s in samples:
        _, text = rubric_judgment(s["response"], s["constraints"], _prompt_text(s), s.get("finish_reason"))
        out.append({"messages": rubric_messages(_chat(s), s["response"]), "response": text})
    return out


def judge_examples(samples: list[dict], *, kinds: tuple[str, ...] = ("refiner", "refinement", "rubric"),
                   seed: int = 0) -> dict[str, list[dict]]:
    """samples: the model's own answers to training prompts, each {"prompt" or "messages",
    "response", "constraints", "finish_reason"?}. Samples without constraints are skipped."""
    labelled = [s for s in samples if s.get("constraints") and s.get("response") is not None]
    builders = {"refiner": lambda: refiner_judgments(labelled, seed), "refinement": lambda: refinement_examples(labelled),
                "rubric": lambda: rubric_examples(labelled)}
    unknown = set(kinds) - set(builders)
    if unknown:
        raise ValueError(f"unknown judge data kinds {sorted(unknown)}; use {sorted(builders)}")
    return {k: builders[k]() for k in kinds}
