"""Training data that teaches a model to judge, built from verifiable prompts: the verifier is the
teacher where no stronger model exists.

Self-Rewarding starts from a judge that can already score (a 70B model plus seed EFT data); SPaR
first trains its refiner on judgments and refinements written by GPT-4o. A 270M model has neither,
and untrained it writes no parseable judgment at all. Here the model's own samples on *training*
prompts (never held-out ones) are labelled by the IFEval verifier, and the labels are written out
in exactly the formats the judges are parsed with:

- refiner judgments (SPaR): the request's instructions listed, each checked as followed or broken,
  then `Verdict: yes|no` — the verdict follows from the checks. Yes and no examples are balanced
  (the majority class is subsampled), so the judge cannot score well by always saying one thing.
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
from services.curriculum.text import describe
from services.judging import verifier
from services.judging.degeneration import degeneration_flags
from services.judging.refiner import REFINED_MARK, judge_messages, refine_messages
from services.judging.rubric import MAX_SCORE, eft_target, rubric_messages


def _chat(sample: dict) -> list[dict]:
    return sample.get("messages") or [{"role": "user", "content": sample["prompt"]}]


def _prompt_text(sample: dict) -> str:
    return sample.get("prompt") or _chat(sample)[-1]["content"]


def checks(sample: dict) -> list[tuple[str, bool]]:
    """(instruction in words, followed) per constraint of the sample, by the strict verifier."""
    verdict = verifier.verify(sample["response"], sample["constraints"], _prompt_text(sample))
    rng = random.Random(0)  # describe() varies wording; one fixed wording per instruction here
    return [(describe(c["id"], c.get("kwargs") or {}, rng), ok)
            for c, ok in zip(sample["constraints"], verdict.strict_per_instruction)]


def judgment_text(found: list[tuple[str, bool]]) -> str:
    lines = ["Instructions in the request:"]
    lines += [f"{i}. {text}" for i, (text, _) in enumerate(found, 1)]
    lines.append("Checks:")
    lines += [f"{i}. {'Followed' if ok else 'Broken'}." for i, (_, ok) in enumerate(found, 1)]
    passed = all(ok for _, ok in found)
    lines.append("All instructions are followed." if passed else
                 f"{sum(not ok for _, ok in found)} instruction(s) broken, so the response fails.")
    lines.append(f"Verdict: {'yes' if passed else 'no'}")
    return "\n".join(lines)


def rubric_score(sample: dict, found: list[tuple[str, bool]]) -> int:
    flags = degeneration_flags(sample["response"], _prompt_text(sample), sample.get("finish_reason"),
                               sample["constraints"])
    if not sample["response"].strip() or flags["echo"] or flags["junk"] or flags["repetition"]:
        return 0
    share = sum(ok for _, ok in found) / len(found) if found else 1.0
    return min(MAX_SCORE, 1 + int(4 * share))


def rubric_justification(sample: dict, found: list[tuple[str, bool]], score: int) -> str:
    if score == 0:
        return "The response does not answer the request: it is empty, repeats the request or degenerates."
    broken = [text for text, ok in found if not ok]
    if not broken:
        return "The response is relevant and follows every instruction in the request."
    return ("The response is relevant, but it breaks " + str(len(broken)) + " of " + str(len(found)) +
            " instructions: " + " ".join(broken))


def refiner_judgments(samples: list[dict], seed: int = 0) -> list[dict]:
    """Balanced yes/no judgment examples for the refiner."""
    yes, no = [], []
    for s in samples:
        found = checks(s)
        ex = {"messages": judge_messages(_chat(s), s["response"]), "response": judgment_text(found)}
        (yes if all(ok for _, ok in found) else no).append(ex)
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
        if all(ok for _, ok in found):
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
        found = checks(s)
        score = rubric_score(s, found)
        out.append({"messages": rubric_messages(_chat(s), s["response"]),
                    "response": eft_target(rubric_justification(s, found, score), score)})
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
