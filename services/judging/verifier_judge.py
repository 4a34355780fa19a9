"""Judgments written by the verifier, in exactly the formats the LLM judges are parsed with.

Two uses: (1) the `verifier` and `hybrid` judge choices of the self-judged methods — for a prompt
with verifiable constraints the programmatic verdict replaces (or backs up) the model's own vote;
(2) training data that teaches a model to judge (services/curriculum/judge_data.py).

- refiner judgment: each instruction of the request in turn, what the response shows about it
  (evidence.py: "3 commas", "ends with '...'") and whether it is therefore followed or broken;
  then `Verdict: yes|no`;
- rubric judgment: the same checks as a short justification, then `Score: N` where N follows from them:
  0 for an empty, echoed or degenerate answer, else 1 + 4 x the share of instructions followed,
  rounded down (5 = every instruction followed).
"""
from __future__ import annotations

from typing import NamedTuple

from services.judging import verifier
from services.judging.degeneration import degeneration_flags
from services.judging.evidence import observe
from services.judging.rubric import MAX_SCORE, eft_target


def verifier_decides(mode: str, constraints) -> bool:
    """Whether the verifier, not the judge model, decides a response under the judging `mode`
    (llm | verifier | hybrid): under verifier and hybrid it decides every prompt with constraints."""
    return mode in ("verifier", "hybrid") and bool(constraints)


def describe(constraint: dict) -> str:
    """An instruction in a few words: its IFEval name and arguments."""
    name = constraint["id"].split(":", 1)[1].replace("_", " ")
    args = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in (constraint.get("kwargs") or {}).items()
                     if v is not None and k != "prompt_to_repeat")
    return f"{name} ({args})" if args else name


class Check(NamedTuple):
    text: str  # the instruction in words
    ok: bool  # followed, by the strict verifier
    seen: str | None = None  # what the response shows about it (evidence.observe)

    @property
    def name(self) -> str:
        return self.text.split(" (", 1)[0]

    def line(self) -> str:
        """The check in words: the instruction, what the response shows, then the decision that
        follows from it."""
        decision = "followed" if self.ok else "broken"
        return f"{self.text}: {self.seen}, so it is {decision}." if self.seen else f"{self.text}: {decision}."


def checks(response: str, constraints: list[dict], prompt_text: str = "") -> list[Check]:
    """One Check per constraint, by the strict verifier, with the observation that decides it."""
    v = verifier.verify(response, constraints, prompt_text)
    return [Check(describe(c), ok, observe(response, c)) for c, ok in zip(constraints, v.strict_per_instruction)]


def numbered(found: list[Check]) -> list[str]:
    """"1. <check>", "2. <check>", ...: the check lines of a refiner or rubric judgment."""
    return [f"{i}. {c.line()}" for i, c in enumerate(found, 1)]


def judgment_text(found: list[Check]) -> str:
    """Each instruction of the request checked in turn, then the verdict that follows."""
    lines = ["Checks of the instructions in the request:", *numbered(found)]
    passed = all(c.ok for c in found)
    lines.append("All instructions are followed." if passed else
                 f"{sum(not c.ok for c in found)} instruction(s) broken, so the response fails.")
    lines.append(f"Verdict: {'yes' if passed else 'no'}")
    return "\n".join(lines)


def refiner_judgment(response: str, constraints: list[dict], prompt_text: str = "") -> tuple[bool, str]:
    """(passed, judgment text ending in the verdict line)."""
    found = checks(response, constraints, prompt_text)
    return all(c.ok for c in found), judgment_text(found)


def rubric_score(response: str, found: list[Check], prompt_text: str = "",
                 constraints: list[dict] | None = None, finish_reason: str | None = None) -> int:
    flags = degeneration_flags(response, prompt_text, finish_reason, constraints)
    if not (response or "").strip() or flags["echo"] or flags["junk"] or flags["repetition"]:
        return 0
    share = sum(c.ok for c in found) / len(found) if found else 1.0
    return min(MAX_SCORE, 1 + int(4 * share))


def rubric_judgment(response: str, constraints: list[dict], prompt_text: str = "",
                    finish_reason: str | None = None) -> tuple[int, str]:
    """(score, judgment text ending in the `Score: N` line)."""
    found = checks(response, constraints, prompt_text)
    score = rubric_score(response, found, prompt_text, constraints, finish_reason)
    if score == 0:
        why = "The response does not answer the request: it is empty, repeats the request or degenerates."
    elif all(c.ok for c in found):
        why = "The response is relevant and follows every instruction in the request."
    else:
        broken = [c.name for c in found if not c.ok]
        why = (f"The response is relevant, but it breaks {len(broken)} of {len(found)} instructions: "
               + "; ".join(broken) + ".")
    if score and found:  # the checks the score follows from, observation first
        why = "Checks: " + " ".join(numbered(found)) + "\n" + why
    return score, eft_target(why, score)
