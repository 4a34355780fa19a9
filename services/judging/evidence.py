"""What a response shows about one instruction, in a few words: the fact that IFEval's checker
decides on ("3 commas", "ends with 'thanks for reading.'", "2 highlighted sections: *a*, *b*").

The judges' training data (verifier_judge.py) writes this observation before each check's
followed/broken decision. Our refiner prompt asks the judge to quote the part of the response that
satisfies or breaks each instruction; a judgment made only of "Followed." / "Broken." lines teaches
the decision without the looking, and a 270M judge trained that way guessed (balanced accuracy
0.59, docs/results.md). With the observation first, the decision is a short step from text the
judge has just copied or counted.

The facts are computed with the rules of lm-evaluation-harness's IFEval checkers (the regular
expressions, word and sentence counts of `lm_eval.tasks.ifeval`), so the observation agrees with
the verifier's verdict. Instruction types without a short observable fact (response language,
first word of the n-th paragraph) return None and keep the bare decision.
"""
from __future__ import annotations

import collections
import json
import re
from typing import Callable

from services.judging import verifier

QUOTE_WORDS = 8


def _quote(text: str, words: int = QUOTE_WORDS, tail: bool = False) -> str:
    """A short quote of the start (or the end) of `text`, on one line."""
    parts = text.split()
    cut = parts[-words:] if tail else parts[:words]
    body = " ".join(cut)
    if len(parts) > words:
        body = "..." + body if tail else body + "..."
    return f"'{body}'"


def _n(count: int, what: str) -> str:
    return f"{count} {what if count == 1 else what + 's'}"


def _listing(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def _capital_words(r: str, kw: dict) -> str:
    return _n(verifier.count_capital_words(r), "word") + " in capital letters"


def _all_capital(r: str, kw: dict) -> str:
    bad = next((w for w in r.split() if any(ch.islower() for ch in w)), None)
    return f"lowercase letters appear, as in '{bad}'" if bad else "no lowercase letters"


def _all_lowercase(r: str, kw: dict) -> str:
    bad = next((w for w in r.split() if any(ch.isupper() for ch in w)), None)
    return f"capital letters appear, as in '{bad}'" if bad else "no capital letters"


def _repeat(r: str, kw: dict) -> str:
    """Where the response's start departs from the request it must repeat (case-insensitive, as
    IFEval compares), quoting both sides."""
    want, got = str(kw.get("prompt_to_repeat", "")).strip(), r.strip()
    if got.lower().startswith(want.lower()):
        return "the response begins with the request, word for word"
    w, g = want.split(), got.split()
    i = next((k for k, (a, b) in enumerate(zip(w, g)) if a.lower() != b.lower()), min(len(w), len(g)))
    if i == len(g):
        return f"the response stops after {_n(i, 'word')} of the request"
    return (f"the response departs from the request at word {i + 1}: "
            f"{_quote(' '.join(g[i:]), 4)} instead of {_quote(' '.join(w[i:]), 4)}")


def _two_responses(r: str, kw: dict) -> str:
    parts = r.split("******")
    inner_empty = any(not p.strip() for p in parts[1:-1])
    kept = [p.strip() for p in parts if p.strip()]
    out = _n(len(kept), "answer") + " separated by ******"
    if inner_empty:
        out += ", with an empty one between them"
    elif len(kept) == 2 and kept[0] == kept[1]:
        out += ", and they are the same"
    return out


def _placeholders(r: str, kw: dict) -> str:
    found = re.findall(r"\[.*?\]", r)
    return _n(len(found), "placeholder") + " in square brackets" + (f": {_listing(found)}" if found else "")


def _postscript_pattern(marker: str) -> str:
    if marker == "P.P.S":
        return r"\s*p\.\s?p\.\s?s.*$"
    if marker == "P.S.":
        return r"\s*p\.\s?s\..*$"
    return r"\s*" + marker.lower() + r".*$"


def _postscript(r: str, kw: dict) -> str:
    marker = str(kw.get("postscript_marker", "P.S."))
    hit = re.search(_postscript_pattern(marker), r.lower(), flags=re.MULTILINE)
    if not hit:
        return f"no postscript marked '{marker}'"
    line = r[hit.start():hit.end()].strip()
    return f"a postscript: {_quote(line)}"


CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def _constrained(r: str, kw: dict) -> str:
    hit = next((o for o in CONSTRAINED_OPTIONS if o in r.strip()), None)
    return f"it contains '{hit}'" if hit else "it contains none of the given answers"


def _json(r: str, kw: dict) -> str:
    body = r.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(prefix)
    body = body.removesuffix("```").strip()
    try:
        json.loads(body)
    except ValueError:
        return f"the response is not valid JSON: it starts with {_quote(body, 4)}"
    return "the whole response is valid JSON"


def _sections(r: str, kw: dict) -> str:
    splitter = str(kw.get("section_spliter", "Section"))
    count = len(re.split(r"\s?" + splitter + r"\s?\d+\s?", r)) - 1
    return _n(count, "section") + f" marked '{splitter} X'"


def _bullets(r: str, kw: dict) -> str:
    count = len(re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)) + len(re.findall(r"^\s*-.*$", r, flags=re.MULTILINE))
    return _n(count, "bullet point")


def _highlights(r: str, kw: dict) -> str:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip()]
    found = single + double
    return _n(len(found), "highlighted section") + (f": {_listing(found)}" if found else "")


def _title(r: str, kw: dict) -> str:
    titles = [t for t in re.findall(r"<<[^\n]+>>", r) if t.lstrip("<").rstrip(">").strip()]
    return f"the title {titles[0]}" if titles else "no title in double angular brackets"


def _existence(r: str, kw: dict) -> str:
    return "; ".join(f"'{k}' {'appears' if re.search(k, r, flags=re.IGNORECASE) else 'does not appear'}"
                     for k in kw.get("keywords", []))


def _forbidden(r: str, kw: dict) -> str:
    used = [w for w in kw.get("forbidden_words", []) if re.search(r"\b" + w + r"\b", r, flags=re.IGNORECASE)]
    return ("it uses " + ", ".join(f"'{w}'" for w in used)) if used else "none of them appears"


def _frequency(r: str, kw: dict) -> str:
    word = str(kw.get("keyword", ""))
    return f"'{word}' appears " + _n(len(re.findall(word, r, flags=re.IGNORECASE)), "time")


def _letters(r: str, kw: dict) -> str:
    letter = str(kw.get("letter", "")).lower()
    return f"the letter '{letter}' appears " + _n(collections.Counter(r.lower())[letter], "time")


def _paragraphs(r: str, kw: dict) -> str:
    parts = re.split(r"\s?\*\*\*\s?", r)
    inner_empty = any(not p.strip() for p in parts[1:-1])
    count = sum(1 for i, p in enumerate(parts) if p.strip() or 0 < i < len(parts) - 1)
    out = _n(count, "paragraph") + " separated by ***"
    return out + (", one of them empty" if inner_empty else "")


def _sentences(r: str, kw: dict) -> str:
    return _n(verifier.count_sentences(r), "sentence")


def _words(r: str, kw: dict) -> str:
    return _n(verifier.count_words(r), "word")


def _commas(r: str, kw: dict) -> str:
    return _n(r.count(","), "comma")


def _ending(r: str, kw: dict) -> str:
    return f"it ends with {_quote(r.strip(), tail=True)}"


def _quotation(r: str, kw: dict) -> str:
    body = r.strip()
    if not body:
        return "the response is empty"
    if len(body) > 1 and body[0] == '"' and body[-1] == '"':
        return "it starts and ends with a double quotation mark"
    return f"it starts with '{body[0]}' and ends with '{body[-1]}'"


OBSERVERS: dict[str, Callable[[str, dict], str]] = {
    "change_case:capital_word_frequency": _capital_words,
    "change_case:english_capital": _all_capital,
    "change_case:english_lowercase": _all_lowercase,
    "combination:repeat_prompt": _repeat,
    "combination:two_responses": _two_responses,
    "detectable_content:number_placeholders": _placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:constrained_response": _constrained,
    "detectable_format:json_format": _json,
    "detectable_format:multiple_sections": _sections,
    "detectable_format:number_bullet_lists": _bullets,
    "detectable_format:number_highlighted_sections": _highlights,
    "detectable_format:title": _title,
    "keywords:existence": _existence,
    "keywords:forbidden_words": _forbidden,
    "keywords:frequency": _frequency,
    "keywords:letter_frequency": _letters,
    "length_constraints:number_paragraphs": _paragraphs,
    "length_constraints:number_sentences": _sentences,
    "length_constraints:number_words": _words,
    "punctuation:no_comma": _commas,
    "startend:end_checker": _ending,
    "startend:quotation": _quotation,
}


def observe(response: str, constraint: dict) -> str | None:
    """The observable fact about `response` that decides `constraint`, in a few words; None for
    instruction types without one."""
    fn = OBSERVERS.get(constraint["id"])
    if fn is None:
        return None
    text = response or ""
    if not text.strip():
        return "the response is empty"
    return fn(text, {k: v for k, v in (constraint.get("kwargs") or {}).items() if v is not None})
