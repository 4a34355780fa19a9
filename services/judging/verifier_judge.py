"""Judgments written by the verifier, in exactly the formats the LLM judges are parsed with.

Two uses: (1) the `verifier` and `hybrid` judge choices of the self-judged methods — for a prompt
with verifiable constraints the programmatic verdict replaces (or backs up) the model's own vote;
(2) training data that teaches a model to judge (services/curriculum/judge_data.py).

- refiner judgment: the request's instructions listed, each checked, then `Verdict: yes|no`;
- rubric judgment: the checks as a short justification, then `Score: N` where N follows from them:
  0 for an empty, echoed or degenerate answer, else 1 + 4 x the share of instructions followed,
  rounded down (5 = every instruction followed).
"""
from __future__ import annotations

from services.judging import verifier
from services.judging.degeneration import degeneration_flags
from services.judging.rubric import MAX_SCORE, eft_target


def describe(constraint: dict) -> str:
    """An instruction in a few words: its IFEval name and arguments."""
    name = constraint["id"].split(":", 1)[1].replace("_", " ")
    args = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (constraint.get("kwargs") or {}).items()
                     if v is not None and k != "prompt_to_repeat")
    return f"{name} ({args})" if args else name


def checks(response: str, constraints: list[dict], prompt_text: str = "") -> list[tuple[str, bool]]:
    """(instruction in words, followed) per constraint, by the strict verifier."""
    v = verifier.verify(response, constraints, prompt_text)
    return [(describe(c), ok) for c, ok in zip(constraints, v.strict_per_instruction)]


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


def refiner_judgment(response: str, constraints: list[dict], prompt_text: str = "") -> tuple[bool, str]:
    """(passed, judgment text ending in the verdict line)."""
    found = checks(response, constraints, prompt_text)
    return all(ok for _, ok in found), judgment_text(found)


def rubric_score(response: str, found: list[tuple[str, bool]], prompt_text: str = "",
                 constraints: list[dict] | None = None, finish_reason: str | None = None) -> int:
    flags = degeneration_flags(response, prompt_text, finish_reason, constraints)
    if not (response or "").strip() or flags["echo"] or flags["junk"] or flags["repetition"]:
        return 0
    share = sum(ok for _, ok in found) / len(found) if found else 1.0
    return min(MAX_SCORE, 1 + int(4 * share))


def rubric_judgment(response: str, constraints: list[dict], prompt_text: str = "",
                    finish_reason: str | None = None) -> tuple[int, str]:
    """(score, judgment text ending in the `Score: N` line)."""
    found = checks(response, constraints, prompt_text)
    score = rubric_score(response, found, prompt_text, constraints, finish_reason)
    if score == 0:
        why = "The response does not answer the request: it is empty, repeats the request or degenerates."
    elif all(ok for _, ok in found):
        why = "The response is relevant and follows every instruction in the request."
    else:
        broken = [text for text, ok in found if not ok]
        why = (f"The response is relevant, but it breaks {len(broken)} of {len(found)} instructions: "
               + "; ".join(broken) + ".")
    return score, eft_target(why, score)
