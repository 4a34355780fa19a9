"""The observations written into judge training data agree with the verifier's verdicts: a judge
taught "3 commas, so it is broken" must never be shown "0 commas, so it is broken"."""
from __future__ import annotations

import functools
import re

import pytest

from services.curriculum.generator import build_curriculum
from services.judging import verifier
from services.judging.evidence import OBSERVERS, observe
from services.judging.refiner import parse_verdict
from services.judging.verifier_judge import checks, judgment_text, rubric_judgment

RELATION = {"less than": lambda n, k: n < k, "at least": lambda n, k: n >= k}

# instruction id -> rule deciding it from the first number of the observation and the kwargs
COUNTED = {
    "length_constraints:number_paragraphs": lambda n, kw: n == kw["num_paragraphs"],
    "detectable_content:number_placeholders": lambda n, kw: n >= kw["num_placeholders"],
    "detectable_format:number_bullet_lists": lambda n, kw: n == kw["num_bullets"],
    "detectable_format:number_highlighted_sections": lambda n, kw: n >= kw["num_highlights"],
    "detectable_format:multiple_sections": lambda n, kw: n >= kw["num_sections"],
    "length_constraints:number_sentences": lambda n, kw: RELATION[kw["relation"]](n, kw["num_sentences"]),
    "length_constraints:number_words": lambda n, kw: RELATION[kw["relation"]](n, kw["num_words"]),
    "change_case:capital_word_frequency": lambda n, kw: RELATION[kw["capital_relation"]](n, kw["capital_frequency"]),
    "keywords:letter_frequency": lambda n, kw: RELATION[kw["let_relation"]](n, kw["let_frequency"]),
    "keywords:frequency": lambda n, kw: RELATION[kw["relation"]](n, kw["frequency"]),
    "punctuation:no_comma": lambda n, kw: n == 0,
}


def variants(text: str) -> list[str]:
    """The reference and the kinds of damage a model's own sample shows."""
    words = text.split()
    return [text, text.upper(), text.lower(), " ".join(words[: len(words) // 2]), text.replace(",", ""),
            text + ", and more, and more.", text.replace("*", ""), text.replace("\n", " "),
            "**" + text + "**", '"' + text.strip().strip('"') + '"', text.replace("***", "")]


@functools.cache
def curriculum() -> list[dict]:
    return build_curriculum(n_train=400, n_heldout=0, n_eft=0)["train"]


def corpus():
    for it in curriculum():
        for resp in variants(it["reference"]):
            yield it, resp


def test_every_curriculum_instruction_type_has_an_observer():
    kinds = {c["id"] for it in curriculum() for c in it["constraints"]}
    assert kinds <= set(OBSERVERS), kinds - set(OBSERVERS)


def test_counts_decide_as_the_verifier_does():
    seen = {k: [0, 0] for k in COUNTED}
    for it, resp in corpus():
        v = verifier.verify(resp, it["constraints"], it["prompt"])
        for c, ok in zip(it["constraints"], v.strict_per_instruction):
            rule = COUNTED.get(c["id"])
            if rule is None:
                continue
            text = observe(resp, c)
            n = int(re.search(r"\d+", text.replace(c["kwargs"].get("keyword", ""), "")).group())
            assert (rule(n, c["kwargs"]) and "empty" not in text) == ok, (c, text, resp)
            seen[c["id"]][ok] += 1
    # the corpus shows every counted type both followed and broken, so the test can fail
    assert all(a and b for a, b in seen.values()), seen


def test_other_observations_differ_between_followed_and_broken():
    by_type: dict[tuple, dict[bool, set[str]]] = {}
    for it, resp in corpus():
        v = verifier.verify(resp, it["constraints"], it["prompt"])
        for c, ok in zip(it["constraints"], v.strict_per_instruction):
            if c["id"] in COUNTED or c["id"].startswith("change_case:english"):
                continue  # english_*: langdetect also decides; the case observation alone cannot
            key = (c["id"], repr(sorted(c["kwargs"].items())))
            by_type.setdefault(key, {True: set(), False: set()})[ok].add(observe(resp, c))
    for kind, seen in by_type.items():
        if seen[True] and seen[False]:
            assert not seen[True] & seen[False], (kind, seen[True] & seen[False])
    assert len({kind for kind, _ in by_type}) >= 10


@pytest.mark.parametrize("ident,kwargs,response,expected", [
    ("punctuation:no_comma", {}, "one, two, three", "2 commas"),
    ("detectable_format:title", {}, "<<Bees>>\nThey hum.", "the title <<Bees>>"),
    ("detectable_format:title", {}, "They hum.", "no title in double angular brackets"),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "Hi *there* and *you*",
     "2 highlighted sections: *there*, *you*"),
    ("startend:quotation", {}, '"quoted"', "it starts and ends with a double quotation mark"),
    ("punctuation:no_comma", {}, "   ", "the response is empty"),
])
def test_observation_wording(ident, kwargs, response, expected):
    assert observe(response, {"id": ident, "kwargs": kwargs}) == expected


def test_a_judgment_says_what_it_saw_before_it_decides():
    cons = [{"id": "punctuation:no_comma", "kwargs": {}},
            {"id": "length_constraints:number_words", "kwargs": {"num_words": 3, "relation": "at least"}}]
    found = checks("Bees hum, buzz, and dance.", cons)
    text = judgment_text(found)
    assert "no comma: 2 commas, so it is broken." in text
    assert "5 words, so it is followed." in text
    assert parse_verdict(text) is False
    score, rubric = rubric_judgment("Bees hum, buzz, and dance.", cons)
    assert score == 3 and "2 commas, so it is broken" in rubric and rubric.endswith("Score: 3")
    # an instruction type without an observer keeps the bare decision
    lang = [{"id": "language:response_language", "kwargs": {"language": "en"}}]
    text = judgment_text(checks("Bees hum in the garden.", lang))
    assert re.search(r"^1\. response language \(language en\): (followed|broken)\.$", text, re.M), text
