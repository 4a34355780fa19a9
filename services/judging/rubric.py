"""The Self-Rewarding LM judge: an additive 5-point rubric the policy applies to its own responses.

Yuan et al. (2024) prompt the model with a rubric that awards one point per criterion (relevant;
addresses a substantial part; answers the basic elements usefully; clearly written, direct and
comprehensive; impeccably tailored and expert with no extraneous content), ask for a short
justification and end with the score. The wording below is ours; the criteria and the 0-5 scale
are the paper's. The score line is `Score: N`, so the same parser reads the judge's output and the
evaluation-fine-tuning (EFT) targets built by the curriculum.

A judgment without a readable score is dropped (None), never counted as 0: averaging a parse
failure as a zero would punish responses for the judge's mistakes.
"""
from __future__ import annotations

import re

MAX_SCORE = 5

RUBRIC_TEMPLATE = """Judge how well the response below answers the user's request. Use an additive 5-point scale: start at 0 and add one point for each criterion the response meets.

1. Add 1 point if the response is relevant to the request, even if it is incomplete or has some unrelated content.
2. Add a 2nd point if it deals with a substantial part of the request, even without fully resolving it.
3. Add a 3rd point if it answers the basic elements of the request in a useful way, even if it is not perfect.
4. Add a 4th point if it is clearly written, direct and comprehensive, the way a helpful assistant would answer, with at most minor room for improvement.
5. Add a 5th point if it is impeccably tailored to the request, shows expert knowledge, follows every instruction in the request and contains nothing extraneous.

<request>
{request}
</request>

<response>
{response}
</response>

First justify your score in at most 100 words. Then write the total on the last line, exactly in the form "Score: N" where N is a whole number from 0 to 5."""

_ROLE_NAMES = {"user": "User", "assistant": "Assistant", "system": "System"}

# "Score: 4", "**Score:** 4", "Total score = 4/5", "Score: 4.5." — alone on its line.
_SCORE_LINE = re.compile(
    r"^[\s>*_#-]*(?:(?:final|total|overall)\s+)?score[\s*_]*[:=][\s*_]*(-?\d+(?:\.\d+)?)\s*(?:/\s*5(?:\.0+)?)?[\s*_.]*$",
    re.IGNORECASE | re.MULTILINE,
)


def render_request(prompt_messages: list[dict]) -> str:
    """The conversation being judged, as text. A single user turn is shown as-is; longer chats
    get role labels so the judge can tell the turns apart."""
    if not prompt_messages:
        raise ValueError("prompt_messages is empty; pass the chat that the response answers")
    for i, message in enumerate(prompt_messages):
        if not isinstance(message, dict) or "content" not in message or "role" not in message:
            raise ValueError(f"prompt_messages[{i}] must be a {{role, content}} dict, got {message!r}")
    if len(prompt_messages) == 1 and prompt_messages[0]["role"] == "user":
        return str(prompt_messages[0]["content"]).strip()
    return "\n\n".join(
        f"{_ROLE_NAMES.get(m['role'], m['role'])}: {str(m['content']).strip()}" for m in prompt_messages
    )


def rubric_messages(prompt_messages: list[dict], response: str) -> list[dict]:
    """The chat to send to the judge model: one user turn holding the rubric, request and response."""
    text = RUBRIC_TEMPLATE.format(request=render_request(prompt_messages), response=(response or "").strip())
    return [{"role": "user", "content": text}]


def parse_score(judgment_text: str) -> float | None:
    """The score of a judgment: the `Score: N` line(s). None when there is none, when several
    score lines disagree (the judge changed its mind or scored several things), or when the
    score is outside 0..5. Decimals are kept (4.5 stays 4.5)."""
    if not judgment_text:
        return None
    values = {float(m.group(1)) for m in _SCORE_LINE.finditer(judgment_text)}
    if len(values) != 1:
        return None
    value = values.pop()
    return value if 0 <= value <= MAX_SCORE else None


def mean_score(scores: list[float | None]) -> float | None:
    """Mean of the parsed scores; None when none parsed (an unjudged response is not a 0)."""
    parsed = [s for s in scores if s is not None]
    return sum(parsed) / len(parsed) if parsed else None


def eft_target(justification: str, score: int) -> str:
    """An EFT training target in the format parse_score reads back."""
    if not 0 <= score <= MAX_SCORE:
        raise ValueError(f"score must be in 0..{MAX_SCORE}, got {score}")
    return f"{justification.strip()}\nScore: {score}"
