"""Signs that a model's answers degenerate, measured on every evaluation beside accuracy.

A round can raise nothing and still wreck the model: a SPIN round with a too-high learning rate
turned answers into "...rises.𒃐𒄯slotBox slotBoxslotBox…" while its training loss looked perfect.
Accuracy alone misses part of that (an echoed prompt satisfies some instructions by accident), so
each answer is also checked for:

- echo: the answer begins by repeating the prompt (the pretrained model's habit in the chat format).
  Prompts that ask for exactly that (IFEval's combination:repeat_prompt) are not counted.
- limit: generation stopped at the token limit instead of ending its turn.
- repetition: one word 4-gram occurs many times, one word comes 4 times in a row, or a short unit
  repeats back to back
  ("𒌒𒌒𒌒𒌒𒌒𒌒", "slotBoxslotBoxslotBox").
- junk: characters of a script the prompt does not use (Cuneiform, Cyrillic, CJK in an English
  exchange) or code-identifier words (camelCase, snake_case) that the prompt does not contain.

Two further checks are not part of the evaluation's flags (adding them would change every stored
degenerate rate): `leaks_turn` (the answer begins a new chat turn) and `restates_prompt` (8 words of
the prompt in a row, or a whole prompt sentence of 5 words or more, anywhere in the answer). With the
flags they make `editable`: whether a failed answer is sound enough that a minimal edit of its broken
instructions gives an answer worth training as right (ReST-EM's `repair_failed`, SPaR-hybrid's
mechanical fixes), and whether a chosen answer the verifier passed is sound (SPaR's pairs).

All functions are pure and cheap; `degeneration_metrics` returns rates over a list of answers.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

from shared.models import FINISH_AT_LIMIT

ECHO_WORDS = 8  # an answer that starts with the prompt's first 8 words (or all of a shorter prompt)
NGRAM = 4
NGRAM_REPEATS = 4  # a word 4-gram seen this many times
WORD_RUN = 4  # one word this many times in a row ("featuresMatrix featuresMatrix ...")
RUN_REPEATS = 6  # a unit of 2..20 characters repeated back to back this many times
LETTER_RUN = 6  # one letter repeated back to back this many times ("𒌒𒌒𒌒𒌒𒌒𒌒")
MARK_RUN = 16  # one non-letter repeated this many times (a "-----" rule or "......" is shorter)
LINE_REPEATS = 3  # a line of 3 words or more written this many times ("That is all for now." x 3)

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*", re.UNICODE)
_RUN = re.compile(r"(.{2,20}?)\1{%d,}" % (RUN_REPEATS - 1), re.DOTALL)
_CHAR_RUN = re.compile(r"([^\W\d_])\1{%d,}|([\W\d_])\2{%d,}" % (LETTER_RUN - 1, MARK_RUN - 1), re.DOTALL)
_IDENT = re.compile(r"\b(?:[a-z]+[A-Z][A-Za-z]*|[A-Za-z]+_[A-Za-z_]+)\b")
# A new chat turn begun inside the answer: the template's "model" / "user" line, whose turn markers
# the decoder strips, on a line of its own, or glued to the end of the last sentence where the
# model ended it with an end-of-turn and went on ("… for years.model\nThank you for reading."), in
# either case (a sampled answer wrote "…raw materials.\nModel\nRecycling turns…").
_TURN_LEAK = re.compile(r"(?:^|\n|(?<=[.!?]))(?:model|user)[ \t]*\n", re.IGNORECASE)
PROMPT_SPAN = 8  # words in a row taken from the prompt
PROMPT_SENTENCE = 5  # a whole prompt sentence this long, restated, counts as well
SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")  # between sentences (also the refinements' splitter)


def words(text: str) -> list[str]:
    """The text's words, lower-cased (letters and digits, inner apostrophes kept)."""
    return [w.lower() for w in _WORD.findall(text or "")]


def _asks_repeat(constraints: list[dict] | None) -> bool:
    return any(c.get("id") == "combination:repeat_prompt" for c in constraints or [])


def echoes_prompt(response: str, prompt: str, constraints: list[dict] | None = None) -> bool:
    """Whether the answer begins by repeating the prompt (case and punctuation ignored)."""
    if _asks_repeat(constraints):
        return False
    p, r = words(prompt), words(response)
    k = min(ECHO_WORDS, len(p))
    return k >= 3 and r[:k] == p[:k]


def hit_limit(finish_reason: str | None) -> bool:
    return finish_reason == FINISH_AT_LIMIT


def repetitive(text: str) -> bool:
    w = words(text)
    grams = Counter(tuple(w[i:i + NGRAM]) for i in range(len(w) - NGRAM + 1))
    if grams and max(grams.values()) >= NGRAM_REPEATS:
        return True
    if any(len(set(w[i:i + WORD_RUN])) == 1 for i in range(len(w) - WORD_RUN + 1)):
        return True
    return bool(_RUN.search(text or "") or _CHAR_RUN.search(text or ""))


@lru_cache(maxsize=4096)
def _script(ch: str) -> str | None:
    """The script of a letter ('LATIN', 'CYRILLIC', 'CUNEIFORM', 'CJK', ...); None for anything
    that is not a letter (digits, punctuation, symbols, spaces belong to every script)."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ")[0] if name else "UNKNOWN"


def _scripts(text: str) -> set[str]:
    return {s for s in map(_script, set(text or "")) if s}


def junk_tokens(response: str, prompt: str) -> list[str]:
    """Characters of scripts the prompt does not use, and identifier-like words it does not contain."""
    allowed = _scripts(prompt) | {"LATIN"}
    out = [ch for ch in dict.fromkeys(response or "") if (s := _script(ch)) and s not in allowed]
    prompt_words = set(_IDENT.findall(prompt or ""))
    out += [w for w in dict.fromkeys(_IDENT.findall(response or "")) if w not in prompt_words]
    return out


def is_junk(response: str, prompt: str) -> bool:
    return bool(junk_tokens(response, prompt))


def leaks_turn(response: str) -> bool:
    """Whether the answer begins a new chat turn ("model" or "user" alone on a line, or right after
    a sentence's closing mark)."""
    return bool(_TURN_LEAK.search(response or ""))


def restates_prompt(response: str, prompt: str, constraints: list[dict] | None = None) -> bool:
    """Whether the answer contains PROMPT_SPAN words of the prompt in a row, or a whole sentence of
    the prompt of PROMPT_SENTENCE words or more ("Put your whole reply inside double quotes."),
    anywhere (not only at its start, as `echoes_prompt` checks); never for prompts that ask for the
    prompt repeated."""
    if _asks_repeat(constraints):
        return False
    q, t = words(prompt), words(response)
    spans = {tuple(q[i:i + PROMPT_SPAN]) for i in range(len(q) - PROMPT_SPAN + 1)}
    if any(tuple(t[i:i + PROMPT_SPAN]) in spans for i in range(len(t) - PROMPT_SPAN + 1)):
        return True
    sentences = {s for s in (tuple(words(x)) for x in SENTENCE_BREAK.split(prompt or ""))
                 if PROMPT_SENTENCE <= len(s) < PROMPT_SPAN}  # longer ones contain a span
    return any(tuple(t[i:i + n]) in sentences for n in {len(x) for x in sentences} for i in range(len(t) - n + 1))


def editable(response: str, prompt: str, constraints: list[dict] | None = None) -> bool:
    """Whether a failed answer is sound apart from its broken instructions, so that a minimal edit
    of those (services/curriculum/refinements.py) makes it an answer worth training as right: it did
    not degenerate (echo, runaway repetition, junk tokens), does not begin a new chat turn and does
    not restate the prompt unless asked to, and does not write one line three times. An edit fixes
    only what the verifier checks, so whatever else is wrong would be trained as right along with it
    (ReST-EM's repairs, SPaR-hybrid's fixes)."""
    return not (any(degeneration_flags(response, prompt, None, constraints).values()) or leaks_turn(response)
                or restates_prompt(response, prompt, constraints) or repeats_a_line(response))


def sound(response: str, prompt: str, constraints: list[dict] | None = None) -> bool:
    """Whether an answer the reward (or a judge) rated well is fit to train on as right, beyond what
    that reward checks: `editable` for a prompt with constraints (no echo, runaway repetition, junk,
    line written three times, leaked turn or restated prompt), and for one checked by its answer
    only, or by a judge alone, no junk, runaway repetition, repeated line or leaked turn (restating
    a problem is part of solving it). ReST-EM's kept answers, Self-Rewarding's chosen ones."""
    if constraints:
        return editable(response, prompt, constraints)
    return not (is_junk(response, prompt) or repetitive(response) or repeats_a_line(response) or leaks_turn(response))


def repeats_a_line(text: str) -> bool:
    """Whether one line of three words or more comes LINE_REPEATS times or more (case and the
    spaces around it ignored): a short loop that the n-gram test misses (three copies of a five-word
    end phrase are not four copies of a 4-gram), and that a fix would otherwise train as right. Not
    part of `degeneration_flags`, so the evaluation's repetition rate keeps its meaning across runs."""
    lines = Counter(line.strip().lower() for line in (text or "").splitlines() if len(words(line)) >= 3)
    return max(lines.values(), default=0) >= LINE_REPEATS


def degeneration_flags(response: str, prompt: str, finish_reason: str | None = None,
                       constraints: list[dict] | None = None) -> dict[str, bool]:
    return {"echo": echoes_prompt(response, prompt, constraints), "limit": hit_limit(finish_reason),
            "repetition": repetitive(response), "junk": is_junk(response, prompt)}


def degeneration_metrics(items: list[dict]) -> dict:
    """items: [{"response", "prompt", "finish_reason"?, "constraints"?}]. Rates in [0, 1] (None for
    no items); `limit_rate` counts only answers whose finish reason is known."""
    if not items:
        return {"echo_rate": None, "limit_rate": None, "repetition_rate": None, "junk_rate": None,
                "degenerate_rate": None, "n_limit": 0}
    flags = [degeneration_flags(i.get("response") or "", i.get("prompt") or "", i.get("finish_reason"),
                                i.get("constraints")) for i in items]
    known = [f for f, i in zip(flags, items) if i.get("finish_reason")]
    n = len(flags)
    return {
        "echo_rate": sum(f["echo"] for f in flags) / n,
        "limit_rate": sum(f["limit"] for f in known) / len(known) if known else None,
        "n_limit": sum(f["limit"] for f in flags),
        "repetition_rate": sum(f["repetition"] for f in flags) / n,
        "junk_rate": sum(f["junk"] for f in flags) / n,
        # junk or runaway repetition: what a collapsed model writes
        "degenerate_rate": sum(f["junk"] or f["repetition"] for f in flags) / n,
    }
