"""The SPaR refiner: a judge that checks a response instruction by instruction and ends with a
yes/no verdict, and a refinement prompt that asks it to correct a failed response.

SPaR (Cheng et al., 2024) has the refiner reason step by step over every constraint in the
request before a final judgment, samples that judgment several times and takes a majority vote
(see votes.py), and then rewrites failed responses with as few changes as possible, so that the
(refined, original) pair differs only where the instruction was broken. The prompt wording is
ours. Output formats: the judgment ends with `Verdict: yes` or `Verdict: no`; the refinement
follows a `Refined response:` line (text without that line is taken whole).

Unreadable output (no verdict, a verdict that flips, an empty refinement) is returned as None.
"""
from __future__ import annotations

import re

from services.judging.rubric import render_request

JUDGE_TEMPLATE = """Check whether the response follows every instruction in the user's request.

<request>
{request}
</request>

<response>
{response}
</response>

Work step by step. First list each instruction and constraint in the request (content, format, length, wording, case, punctuation and so on). Then check them one at a time, quoting the part of the response that satisfies or breaks each one. A single broken instruction means the response fails.
End with one final line, exactly "Verdict: yes" if the response follows all instructions or "Verdict: no" if it breaks any."""

REFINE_TEMPLATE = """A response to the user's request below was judged not to follow all of its instructions. Rewrite it so that it follows every instruction.

<request>
{request}
</request>

<response>
{response}
</response>

<judgment>
{judgment}
</judgment>

Fix what the judgment points out and keep everything else in the response as it is: change as little as needed. Write the line "Refined response:" and then only the corrected response, with no comments."""

REFINED_MARK = "Refined response:"

_VERDICT_LINE = re.compile(
    r"^[\s>*_#-]*(?:final\s+)?verdict[\s*_]*[:=][\s*_]*(yes|no)\b[\s*_.!]*$",
    re.IGNORECASE | re.MULTILINE,
)
# The marker line, with optional markdown bold around it; only spaces after it on the same line
# are eaten, so a refinement that starts with a `*` bullet on the next line keeps it.
_MARK = re.compile(r"^[ \t*_#]*refined response[ \t*_]*:[ \t]*(?:\*\*|__)?[ \t]*", re.IGNORECASE | re.MULTILINE)


def judge_messages(prompt_messages: list[dict], response: str) -> list[dict]:
    """The chat asking the refiner for a step-by-step check ending in a yes/no verdict."""
    text = JUDGE_TEMPLATE.format(request=render_request(prompt_messages), response=(response or "").strip())
    return [{"role": "user", "content": text}]


def parse_verdict(text: str) -> bool | None:
    """True for `Verdict: yes`, False for `Verdict: no`; None when there is no verdict line or the
    verdict lines disagree."""
    if not text:
        return None
    found = {m.group(1).lower() for m in _VERDICT_LINE.finditer(text)}
    if len(found) != 1:
        return None
    return found.pop() == "yes"


def refine_messages(prompt_messages: list[dict], response: str, judgment_text: str) -> list[dict]:
    """The chat asking the refiner to correct `response` given its judgment of it."""
    text = REFINE_TEMPLATE.format(
        request=render_request(prompt_messages),
        response=(response or "").strip(),
        judgment=(judgment_text or "").strip() or "(no details given)",
    )
    return [{"role": "user", "content": text}]


def parse_refinement(text: str) -> str | None:
    """The corrected response in a refinement: what follows the last `Refined response:` line,
    or the whole text when there is none. None when nothing usable is left, or when the output
    is a judgment rather than a rewrite (it carries a verdict line)."""
    if not text or not text.strip():
        return None
    marks = list(_MARK.finditer(text))
    body = text[marks[-1].end():] if marks else text
    body = body.strip("\n").rstrip()
    # Leading spaces matter to some checks (bullets), so strip only whole blank lines above.
    if not body.strip():
        return None
    if _VERDICT_LINE.search(body):
        return None
    return body
