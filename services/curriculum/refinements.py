"""Minimal edits that make a failing response follow its verifiable instructions.

SPaR trains its refiner on (failed response, judgment, refined response) triples whose refinement
changes only what the judgment points out; the paper builds them with GPT-4o. We have no stronger
model, but for many IFEval instruction types the fix is mechanical: lowercase the text, delete the
commas, append the end phrase or a postscript, prepend a title, wrap in quotes or JSON, regroup the
sentences into N bullets / paragraphs / sections, highlight N words, add placeholders, drop a
forbidden word. `refine` applies the fixes of the instructions the response breaks, in an order
that keeps earlier fixes intact (content, then layout, then characters, then wrappers), and returns
the result only when the IFEval verifier passes it strictly — a fix that does not verify is dropped.

Instruction types without a well-defined minimal edit (letter frequency, a word count to reach,
two different responses, a constrained yes/no/maybe answer) are not fixed: such a response yields
None. Everything here is deterministic.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable

from services.judging import verifier
from services.judging.degeneration import SENTENCE_BREAK, words

_BULLET = re.compile(r"^\s*(?:[*-]\s+)", re.MULTILINE)
# a "***" paragraph separator: three marks standing alone, not a run of them inside a sentence
# ("write to me at *******." is the answer's own masking, kept as written)
_SEPARATOR = re.compile(r"(?:^|(?<=\s))\*\*\*(?=\s|$)", re.MULTILINE)
_LEADING_TITLE = re.compile(r"(<<[^\n<>]+>>)[ \t]*(?:\n|$)")
_HEADER = re.compile(r"^\W*(?:section|paragraph|part|chapter)\s+\d+\W*$", re.IGNORECASE)
Fix = Callable[[str, dict, str], str | None]
# a line that opens a postscript: "P.S.", "P.P.S", "p. s." at its start
_POSTSCRIPT = re.compile(r"^[ \t]*P\.[ \t]?(?:P\.[ \t]?)*S\b", re.IGNORECASE | re.MULTILINE)


def _split_postscript(text: str) -> tuple[str, str]:
    """(body, postscript): the postscript block that closes the answer, from the first line that
    opens with a P.S. marker to the end, and what stands before it. ("", …) never: an answer that
    is nothing but a postscript has no body to keep apart, so it comes back whole with tail ''."""
    m = _POSTSCRIPT.search(text)
    if not m or not text[:m.start()].strip():
        return text, ""
    return text[:m.start()].rstrip(), text[m.start():].strip()


def _with_postscript(body: str, tail: str) -> str:
    return f"{body.rstrip()}\n\n{tail}" if tail else body


def _append(text: str, extra: str, above_postscript: bool = True) -> str:
    """`extra` added at the end of the answer, inside the double quotes that wrap it (an answer the
    model already quoted stays quoted, instead of getting `"…" [name] [place]"`), and by default
    above a closing postscript, which stays the last thing in it rather than having a keyword
    sentence or placeholders land inside the P.S."""
    s = text.strip()
    if len(s) > 1 and s[0] == s[-1] == '"':
        return f'"{_append(s[1:-1], extra, above_postscript)}"'
    body, tail = _split_postscript(text) if above_postscript else (text, "")
    return _with_postscript(body.rstrip() + extra, tail)


def _sentences(text: str) -> list[str]:
    """The text's sentences with its old layout taken out: bullet marks at line starts, "***"
    separators and lines that are only a section header ("SECTION 2"), so that regrouping a text
    that already had some layout does not keep stray marks ("* * its shape", a doubled header)."""
    lines = [_BULLET.sub("", line).strip() for line in _SEPARATOR.sub("\n", text).splitlines()]
    flat = " ".join(line for line in lines if line and not _HEADER.match(line))
    return [s for s in SENTENCE_BREAK.split(flat) if s.strip()]


def _groups(text: str, n: int) -> list[str] | None:
    """The text's sentences in n non-empty consecutive groups, or None when it has fewer than n
    sentences: cutting sentences into pieces to make up the count ("causes the\n* tides.") gives an
    answer nobody would write, which is worse training data than no fix at all."""
    parts = _sentences(text)
    if len(parts) < n:
        return None
    size, extra = divmod(len(parts), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < extra)
        out.append(" ".join(parts[start:end]))
        start = end
    return out


def _regroup(text: str, n: int, lay_out: Callable[[list[str]], str]) -> str | None:
    """The text's sentences in n groups (`_groups`) laid out by `lay_out`, or None. Inside a pair of
    wrapping double quotes the quotes are put back around the result, so they stay the answer's
    first and last characters instead of landing inside a bullet or after a section header (on
    lines of their own above and below a list that opens with a bullet: `"* first` is no bullet); a
    <<title>> line that opens the answer stays its first line, above the new layout, and a closing
    postscript stays below it (regrouped, a "P.P.S." became the last bullet or the end of the last
    section's text, and answers trained on such fixes learned to fold the postscript away)."""
    s = text.strip()
    quoted = len(s) > 1 and s[0] == s[-1] == '"'
    body = s[1:-1].strip() if quoted else s
    title = _LEADING_TITLE.match(body)
    rest, tail = _split_postscript(body[title.end():] if title else body)
    groups = _groups(rest, n)
    if groups is None:
        return None
    out = _with_postscript((title.group(1) + "\n\n" if title else "") + lay_out(groups), tail)
    if quoted and out.startswith("*"):  # a bullet must open its line: the quotes get lines of their own
        return f'"\n{out}\n"'
    return f'"{out}"' if quoted else out


def _plain(text: str) -> str:
    return re.sub(r"[^\w\s]", "", text)


# ---------------------------------------------------------------- content
def _forbidden(t: str, kw: dict, p: str) -> str:
    for word in kw.get("forbidden_words") or []:
        t = re.sub(r"\s*\b" + re.escape(word) + r"\b", "", t, flags=re.IGNORECASE)
    return t.strip()


def _keyword_frequency(t: str, kw: dict, p: str) -> str | None:
    word, want, relation = kw["keyword"], int(kw["frequency"]), kw["relation"]
    have = len(re.findall(re.escape(word), t, flags=re.IGNORECASE))
    if relation == "at least":
        return _append(t, "".join(f" This is about {word}." for _ in range(want - have)))
    for _ in range(have - want + 1):  # "less than": drop the last occurrences
        matches = list(re.finditer(r"\s*\b" + re.escape(word) + r"\b", t, flags=re.IGNORECASE))
        if not matches:
            return None
        m = matches[-1]
        t = t[:m.start()] + t[m.end():]
    return t


def _existence(t: str, kw: dict, p: str) -> str:
    missing = [k for k in kw.get("keywords") or [] if not re.search(re.escape(k), t, flags=re.IGNORECASE)]
    return _append(t, "".join(f" This is about {k}." for k in missing))


def _number_words(t: str, kw: dict, p: str) -> str | None:
    if kw["relation"] != "less than":
        return None
    limit = int(kw["num_words"])
    body, tail = _split_postscript(t)
    room = limit - verifier.count_words(tail)  # the words a closing postscript leaves to the body
    if room < 2:  # the postscript alone is (nearly) over the limit: cut the answer as a whole
        body, tail, room = t, "", limit
    kept = []
    for s in SENTENCE_BREAK.split(body.strip()):
        if verifier.count_words(" ".join(kept + [s])) >= room:
            break
        kept.append(s)
    if not kept:
        kept = [" ".join(body.split()[:max(1, room - 1)])]
    return _with_postscript(" ".join(kept), tail)


def _number_sentences(t: str, kw: dict, p: str) -> str | None:
    if kw["relation"] != "less than":
        return None
    limit = int(kw["num_sentences"])
    body, tail = _split_postscript(t)
    out = _drop_last_sentences(body, tail, limit)
    if tail and verifier.count_sentences(out) >= limit:  # the postscript alone is too long: cut the whole answer
        out = _drop_last_sentences(t, "", limit)
    return out


def _drop_last_sentences(body: str, tail: str, limit: int) -> str:
    """`body`'s last sentences dropped (one is always kept) until the body with `tail` below it has
    fewer than `limit` sentences, or only one body sentence is left."""
    parts = SENTENCE_BREAK.split(body.strip())
    while len(parts) > 1 and verifier.count_sentences(_with_postscript(" ".join(parts), tail)) >= limit:
        parts.pop()
    return _with_postscript(" ".join(parts), tail)


def _placeholders(t: str, kw: dict, p: str) -> str:
    need = int(kw["num_placeholders"]) - len(re.findall(r"\[.*?\]", t))
    names = ["name", "place", "date", "time", "address", "number", "topic", "email"]
    extra = " ".join(f"[{names[i % len(names)]}]" for i in range(max(0, need)))
    return _append(t, f"\n\n{extra}") if extra else t


def _highlights(t: str, kw: dict, p: str) -> str:
    need = int(kw["num_highlights"]) - len(re.findall(r"\*[^\n\*]+\*", t))
    if need <= 0:
        return t

    def star(m: re.Match) -> str:
        nonlocal need
        if need <= 0 or len(m.group(0)) < 4:
            return m.group(0)
        need -= 1
        return f"*{m.group(0)}*"

    return re.sub(r"(?<![*\w])[A-Za-z][\w'-]*(?![*\w])", star, t)


# ---------------------------------------------------------------- layout
def _bullets(t: str, kw: dict, p: str) -> str | None:
    return _regroup(t, int(kw["num_bullets"]), lambda g: "\n".join(f"* {s}" for s in g))


def _paragraphs(t: str, kw: dict, p: str) -> str | None:
    return _regroup(t, int(kw["num_paragraphs"]), "\n\n***\n\n".join)


def _sections(t: str, kw: dict, p: str) -> str | None:
    marker = kw["section_spliter"]
    return _regroup(t, int(kw["num_sections"]), lambda g: "\n\n".join(f"{marker} {i}\n{s}" for i, s in enumerate(g, 1)))


def _title(t: str, kw: dict, p: str) -> str:
    first = next(iter(_sentences(t)), t)
    head = _plain(first).split()[:4] or ["Answer"]
    return f"<<{' '.join(w.capitalize() for w in head)}>>\n\n{t}"


def _repeat_prompt(t: str, kw: dict, p: str) -> str:
    return f"{kw['prompt_to_repeat'].strip()}\n{t}"


def _postscript(t: str, kw: dict, p: str) -> str:
    return _append(t, f"\n\n{kw['postscript_marker']} Thank you for reading.", above_postscript=False)


def _end(t: str, kw: dict, p: str) -> str:
    return _append(t, f" {kw['end_phrase']}", above_postscript=False)  # the checker looks inside quotes


# ---------------------------------------------------------------- characters and wrappers
def _capital_words(t: str, kw: dict, p: str) -> str | None:
    want, relation = int(kw["capital_frequency"]), kw["capital_relation"]
    if relation == "less than":
        return re.sub(r"\b[A-Z]{2,}\b", lambda m: m.group(0).capitalize(), t)
    need = want - verifier.count_capital_words(t)

    def up(m: re.Match) -> str:
        nonlocal need
        if need <= 0 or m.group(0).isupper():
            return m.group(0)
        need -= 1
        return m.group(0).upper()

    return re.sub(r"\b[A-Za-z]{2,}\b", up, t)


def _quotation(t: str, kw: dict, p: str) -> str:
    """Only the missing quote marks: an answer that opened its quote and forgot to close it gets a
    closing mark, not a second opening one."""
    s = t.strip()
    return ("" if s.startswith('"') else '"') + s + ("" if s.endswith('"') and len(s) > 1 else '"')


def _json(t: str, kw: dict, p: str) -> str:
    """The JSON object the answer already holds, with what it wrote around it cut away (a closing
    tag, a line of chatter); the whole answer as a string value when it holds none, or only a small
    one inside its prose (fewer than half of its words: keeping it would cut the answer, not fix it)."""
    start, end = t.find("{"), t.rfind("}")
    if 0 <= start < end:
        try:
            json.loads(t[start:end + 1])
            if 2 * len(words(t[start:end + 1])) >= len(words(t)):
                return t[start:end + 1]
        except ValueError:
            pass
    return json.dumps({"answer": t})


FIXES: list[tuple[str, Fix]] = [  # applied in this order
    ("keywords:forbidden_words", _forbidden),
    ("keywords:frequency", _keyword_frequency),
    ("length_constraints:number_words", _number_words),
    ("length_constraints:number_sentences", _number_sentences),
    ("keywords:existence", _existence),
    ("detectable_content:number_placeholders", _placeholders),
    ("detectable_format:number_bullet_lists", _bullets),
    ("length_constraints:number_paragraphs", _paragraphs),
    ("detectable_format:multiple_sections", _sections),
    ("detectable_format:number_highlighted_sections", _highlights),
    ("detectable_format:title", _title),
    ("combination:repeat_prompt", _repeat_prompt),
    ("detectable_content:postscript", _postscript),
    ("startend:end_checker", _end),
    ("punctuation:no_comma", lambda t, kw, p: t.replace(",", "")),
    ("change_case:capital_word_frequency", _capital_words),
    ("change_case:english_lowercase", lambda t, kw, p: t.lower()),
    ("change_case:english_capital", lambda t, kw, p: t.upper()),
    ("startend:quotation", _quotation),
    ("detectable_format:json_format", _json),
]
FIXABLE = {ident for ident, _ in FIXES}
# fixes that work on the whole answer even when it ends with the end phrase it was asked for: the
# end fix itself, the wrappers (the end checker looks inside quotes) and the ones that change
# characters in place
_WHOLE = {"startend:end_checker", "startend:quotation", "detectable_format:json_format", "punctuation:no_comma",
          "change_case:english_lowercase", "change_case:english_capital", "change_case:capital_word_frequency"}


_CUTS = {"length_constraints:number_sentences": ("num_sentences", verifier.count_sentences),
         "length_constraints:number_words": ("num_words", verifier.count_words)}


def _end_phrase(constraints: list[dict]) -> str:
    """The phrase an end_checker instruction asks the answer to end with ('' when none does)."""
    for c in constraints:
        if c["id"] == "startend:end_checker":
            return str((c.get("kwargs") or {}).get("end_phrase") or "").strip()
    return ""


def _apply(ident: str, fix: Fix, text: str, kw: dict, prompt_text: str, end: str) -> str | None:
    """`fix` on `text`. An answer that already ends with the end phrase it was asked for keeps it
    last: the fix works on what stands before it. Otherwise a postscript, a keyword sentence or
    placeholders land after the phrase, the end fix then writes the phrase a second time ("… Any
    other questions? P.S. Thank you for reading. Any other questions?"), and a sentence cut takes
    the phrase first."""
    s = text.rstrip()
    if end and ident not in _WHOLE and s.lower().endswith(end.lower()) and s[:-len(end)].strip():
        if ident in _CUTS:  # the phrase counts toward the limit: the body gets what it leaves
            key, count = _CUTS[ident]
            left = int(kw[key]) - count(end)
            if left < 2:  # the phrase alone (nearly) fills the limit: cut the answer as a whole
                return fix(text, kw, prompt_text)
            kw = {**kw, key: left}
        out = fix(s[:-len(end)].rstrip(), kw, prompt_text)
        return None if out is None else f"{out.rstrip()} {s[-len(end):]}"
    return fix(text, kw, prompt_text)


def refine(response: str, constraints: list[dict], prompt_text: str = "") -> str | None:
    """A minimally edited `response` that passes every constraint strictly, or None when the
    response already passes, a broken instruction has no mechanical fix, or the fix fails to verify."""
    if not constraints or not (response or "").strip():
        return None
    text, end = response, _end_phrase(constraints)
    for attempt in range(3):  # a fix can break an instruction that passed (a title vs lowercase)
        verdict = verifier.verify(text, constraints, prompt_text)
        if verdict.strict:
            return None if attempt == 0 else text
        broken = {c["id"]: c.get("kwargs") or {} for c, ok in zip(constraints, verdict.strict_per_instruction)
                  if not ok}
        if not set(broken) <= FIXABLE:
            return None
        for ident, fix in FIXES:
            if ident in broken:
                out = _apply(ident, fix, text, broken[ident], prompt_text, end)
                if out is None or not out.strip():
                    return None
                text = out
    return text if verifier.verify(text, constraints, prompt_text).strict else None
