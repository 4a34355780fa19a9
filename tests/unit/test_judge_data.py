"""Judge-bootstrap data: every programmatic refinement passes the verifier and changes only what it
must; judgments parse back to the verifier's label; rubric scores follow the checks."""
from __future__ import annotations

import re

import pytest

from services.curriculum.generator import build_curriculum
from services.curriculum.judge_data import judge_examples, rubric_score, checks
from services.curriculum.refinements import FIXABLE, refine
from services.judging import verifier
from services.judging.refiner import parse_refinement, parse_verdict
from services.judging.rubric import parse_score


def c(ident: str, **kw) -> dict:
    return {"id": ident, "kwargs": kw}


BASE = "Honeybees live in colonies. Worker bees collect nectar, and they make honey. Bees dance to share news."
# (constraints, what must be true of the fix beyond passing)
TABLE = [
    ([c("change_case:english_lowercase")], lambda r: r == BASE.lower()),
    ([c("change_case:english_capital")], lambda r: r == BASE.upper()),
    ([c("punctuation:no_comma")], lambda r: r == BASE.replace(",", "")),
    ([c("startend:end_checker", end_phrase="Is there anything else I can help with?")],
     lambda r: r.startswith(BASE)),
    ([c("detectable_content:postscript", postscript_marker="P.S.")], lambda r: r.startswith(BASE)),
    ([c("detectable_format:title")], lambda r: r.endswith(BASE)),
    ([c("startend:quotation")], lambda r: r == f'"{BASE}"'),
    ([c("detectable_format:json_format")], lambda r: BASE in __import__("json").loads(r).values()),
    ([c("detectable_content:number_placeholders", num_placeholders=2)], lambda r: r.startswith(BASE)),
    ([c("detectable_format:number_bullet_lists", num_bullets=3)], lambda r: r.count("\n* ") == 2),
    ([c("length_constraints:number_paragraphs", num_paragraphs=3)], lambda r: r.count("***") == 2),
    ([c("detectable_format:multiple_sections", section_spliter="SECTION", num_sections=2)],
     lambda r: "SECTION 2" in r),
    ([c("detectable_format:number_highlighted_sections", num_highlights=2)], lambda r: r.count("*") == 4),
    ([c("keywords:forbidden_words", forbidden_words=["nectar"])], lambda r: "nectar" not in r.lower()),
    ([c("keywords:existence", keywords=["pollen"])], lambda r: r.startswith(BASE)),
    ([c("keywords:frequency", keyword="bees", relation="less than", frequency=2)], lambda r: True),
    ([c("length_constraints:number_sentences", relation="less than", num_sentences=2)], lambda r: BASE.startswith(r)),
    ([c("combination:repeat_prompt", prompt_to_repeat="Tell me about bees.")],
     lambda r: r.startswith("Tell me about bees.") and r.endswith(BASE)),
    # two broken at once, one fix undoing nothing of the other
    ([c("detectable_format:title"), c("change_case:english_lowercase"), c("punctuation:no_comma")],
     lambda r: r.startswith("<<") and r == r.lower() and "," not in r),
]


@pytest.mark.parametrize("constraints,extra", TABLE, ids=[";".join(x["id"] for x in t[0]) for t in TABLE])
def test_each_refinement_passes_and_keeps_the_rest(constraints, extra):
    prompt = "Tell me about bees."
    assert not verifier.verify(BASE, constraints, prompt).strict
    fixed = refine(BASE, constraints, prompt)
    assert fixed is not None and verifier.verify(fixed, constraints, prompt).strict
    assert extra(fixed), fixed
    # only what it must: the original words survive in order, unless the fix is a deletion or case change
    deleting = {"keywords:forbidden_words", "keywords:frequency", "length_constraints:number_sentences"}
    if not deleting & {x["id"] for x in constraints}:
        words = re.findall(r"[a-z]+", BASE.lower())
        got = re.findall(r"[a-z]+", fixed.lower())
        it = iter(got)
        assert all(w in it for w in words)


def test_no_refinement_when_passing_or_unfixable():
    assert refine(BASE, [c("punctuation:no_comma")] and [c("startend:quotation")], "") is not None
    assert refine(BASE.replace(",", ""), [c("punctuation:no_comma")]) is None  # already passes
    assert refine(BASE, [c("keywords:letter_frequency", letter="z", let_relation="at least", let_frequency=9)]) is None
    assert refine("", [c("punctuation:no_comma")]) is None


def test_refinements_of_the_curriculum_all_verify():
    items = build_curriculum(n_train=120, n_heldout=0, n_eft=0)["train"]
    fixed = failing = 0
    for it in items:
        plain = " ".join(line for line in it["reference"].replace("***", " ").splitlines() if line.strip())
        plain = plain.replace("<<", "").replace(">>", "").capitalize() + ", okay."
        if verifier.verify(plain, it["constraints"], it["prompt"]).strict:
            continue
        out = refine(plain, it["constraints"], it["prompt"])
        failing += {x["id"] for x in it["constraints"]} <= FIXABLE
        if out is not None:
            fixed += 1
            assert verifier.verify(out, it["constraints"], it["prompt"]).strict
    assert failing > 40 and fixed >= 0.9 * failing


def test_judge_examples_parse_back_to_the_verifier_label():
    items = build_curriculum(n_train=40, n_heldout=0, n_eft=0)["train"]
    samples = []
    for it in items:
        samples.append({"prompt": it["prompt"], "response": it["reference"], "constraints": it["constraints"]})
        samples.append({"prompt": it["prompt"], "response": it["reference"].upper() + ", yes",
                        "constraints": it["constraints"]})
    data = judge_examples(samples)
    yes = [parse_verdict(e["response"]) for e in data["refiner"]]
    assert None not in yes and yes.count(True) == yes.count(False) > 10
    for e in data["refinement"]:
        assert parse_refinement(e["response"]) is not None
        assert "Verdict: no" in e["messages"][0]["content"]
    scores = [parse_score(e["response"]) for e in data["rubric"]]
    assert None not in scores and len(scores) == len(samples)
    golds = scores[0::2]
    assert all(s == 5 for s in golds)  # every gold answer follows everything
    assert all(s < 5 for s, smp in zip(scores[1::2], samples[1::2])
               if not verifier.verify(smp["response"], smp["constraints"], smp["prompt"]).strict)


def test_rubric_score_follows_the_checks():
    s = {"prompt": "Tell me about bees.", "response": BASE, "constraints": [c("punctuation:no_comma"),
                                                                          c("detectable_format:title")]}
    assert rubric_score(s, checks(s)) == 1  # 0 of 2 followed
    s2 = {**s, "response": BASE.replace(",", "")}
    assert rubric_score(s2, checks(s2)) == 3  # 1 of 2
    echo = {**s, "response": "Tell me about bees. Tell me more"}
    assert rubric_score(echo, checks(echo)) == 0


VOLCANO = ("Volcanoes form where magma rises. They can erupt violently. Ash can travel far. Lava cools into rock."
           "\n\nP.P.S. I hope this helps.")
PPS = c("detectable_content:postscript", postscript_marker="P.P.S")
ENDS = "Bees make honey. They live in hives. Bees dance. Any other questions?"
END = c("startend:end_checker", end_phrase="Any other questions?")


@pytest.mark.parametrize("text,constraints,want", [
    # bullets over an answer that already had some: the old marks go, none doubled ("* * its shape")
    ("* the moon orbits the earth.\n* its gravity moves the tides.\n* its shape changes.\n* it shines.\n* it is old.",
     [c("detectable_format:number_bullet_lists", num_bullets=4)],
     "* the moon orbits the earth. its gravity moves the tides.\n* its shape changes.\n* it shines.\n* it is old."),
    # sections inside wrapping quotes: the old header is not kept as text, the quotes stay outside
    ('"SECTION 1\nLighthouses warn ships. False alarms turn ships around."',
     [c("detectable_format:multiple_sections", section_spliter="SECTION", num_sections=2), c("startend:quotation")],
     '"SECTION 1\nLighthouses warn ships.\n\nSECTION 2\nFalse alarms turn ships around."'),
    # a quote opened and never closed: only the closing mark is added
    ('"A heart pumps blood. It beats all day.', [c("startend:quotation")], '"A heart pumps blood. It beats all day."'),
    # JSON the answer already wrote, with chatter after it: the chatter is cut, the object kept as is
    ('{\n  "title": "Octopus"\n}\n</share>', [c("detectable_format:json_format")], '{\n  "title": "Octopus"\n}'),
    # "***" paragraph separators go, a run of marks inside a sentence is the answer's own text
    ("Storms form at sea.\n\n***\n\nThey move west. Write to me at *******.\n* Or call at ***.",
     [c("detectable_format:number_bullet_lists", num_bullets=2)],
     "* Storms form at sea. They move west.\n* Write to me at *******. Or call at ***."),
    # a title that opens the answer stays above the new layout, not inside the first bullet
    ('"<<Vaccines>>\n\nA vaccine trains the body. It fights germs faster. It works best early."',
     [c("detectable_format:number_bullet_lists", num_bullets=2), c("detectable_format:title"), c("startend:quotation")],
     '"<<Vaccines>>\n\n* A vaccine trains the body. It fights germs faster.\n* It works best early."'),
    # a small object inside prose is part of the answer, not the answer: the whole text is wrapped
    ('Set it to {"mode": "fast"} and the pump runs all night without a break.', [c("detectable_format:json_format")],
     '{"answer": "Set it to {\\"mode\\": \\"fast\\"} and the pump runs all night without a break."}'),
    # bullets inside quotes: a line that opens with the quote is no bullet, so the quotes get lines of their own
    ('"Bees make honey. They live in hives."', [c("detectable_format:number_bullet_lists", num_bullets=2),
                                               c("startend:quotation")],
     '"\n* Bees make honey.\n* They live in hives.\n"'),
    ("Bees make honey. They live in hives.", [c("detectable_format:number_bullet_lists", num_bullets=2),
                                              c("startend:quotation")],
     '"\n* Bees make honey.\n* They live in hives.\n"'),
    # a closing postscript stays below a new layout: not the last bullet, not the end of the last section
    (VOLCANO, [c("detectable_format:number_bullet_lists", num_bullets=3), PPS],
     "* Volcanoes form where magma rises. They can erupt violently.\n* Ash can travel far.\n"
     "* Lava cools into rock.\n\nP.P.S. I hope this helps."),
    (VOLCANO, [c("detectable_format:multiple_sections", section_spliter="SECTION", num_sections=2), PPS],
     "SECTION 1\nVolcanoes form where magma rises. They can erupt violently.\n\n"
     "SECTION 2\nAsh can travel far. Lava cools into rock.\n\nP.P.S. I hope this helps."),
    (VOLCANO, [c("length_constraints:number_paragraphs", num_paragraphs=2), PPS],
     "Volcanoes form where magma rises. They can erupt violently.\n\n***\n\n"
     "Ash can travel far. Lava cools into rock.\n\nP.P.S. I hope this helps."),
    # what a fix adds goes into the body, above the postscript; a cut takes body sentences, not the P.S.
    (VOLCANO, [c("keywords:existence", keywords=["pollen"]), PPS],
     VOLCANO.replace("rock.", "rock. This is about pollen.")),
    (VOLCANO, [c("keywords:frequency", keyword="ash", relation="at least", frequency=2), PPS],
     VOLCANO.replace("rock.", "rock. This is about ash.")),
    (VOLCANO, [c("detectable_content:number_placeholders", num_placeholders=2), PPS],
     VOLCANO.replace("rock.", "rock.\n\n[name] [place]")),
    (VOLCANO, [c("length_constraints:number_words", relation="less than", num_words=14), PPS],
     "Volcanoes form where magma rises.\n\nP.P.S. I hope this helps."),
    # an answer that already ends with its end phrase keeps it last: what a fix adds or cuts is above it
    (ENDS, [END, c("detectable_content:postscript", postscript_marker="P.S.")],
     "Bees make honey. They live in hives. Bees dance.\n\nP.S. Thank you for reading. Any other questions?"),
    (ENDS, [END, c("keywords:existence", keywords=["pollen"])],
     "Bees make honey. They live in hives. Bees dance. This is about pollen. Any other questions?"),
    (ENDS, [END, c("length_constraints:number_sentences", relation="less than", num_sentences=3)],
     "Bees make honey. Any other questions?"),
    (ENDS, [END, c("length_constraints:number_words", relation="less than", num_words=9)],
     "Bees make honey. Any other questions?"),
    # what a fix adds to an answer the model already quoted goes inside the quotes
    ('"Bees make honey."', [c("detectable_content:number_placeholders", num_placeholders=2), c("startend:quotation")],
     '"Bees make honey.\n\n[name] [place]"'),
    ('"Bees make honey."', [c("startend:end_checker", end_phrase="Any other questions?"), c("startend:quotation")],
     '"Bees make honey. Any other questions?"'),
    ('"Bees make honey."', [c("detectable_content:postscript", postscript_marker="P.S."), c("startend:quotation")],
     '"Bees make honey.\n\nP.S. Thank you for reading."'),
    # a postscript that alone breaks the count is cut with the rest, as before
    ("Bees make honey. They live in hives.\n\nP.S. " + "Bees are small and they are busy all day long. " * 3,
     [c("length_constraints:number_words", relation="less than", num_words=8)], "Bees make honey. They live in hives."),
])
def test_a_fix_of_an_answer_with_some_layout_changes_only_what_it_must(text, constraints, want):
    assert refine(text, constraints, "") == want


def test_no_layout_fix_cuts_sentences_to_make_up_a_count():
    """Two sentences cannot be three bullets or paragraphs without splitting a sentence: no fix."""
    two = "Bees make honey. They live in hives."
    assert refine(two, [c("detectable_format:number_bullet_lists", num_bullets=3)]) is None
    assert refine(two, [c("length_constraints:number_paragraphs", num_paragraphs=3)]) is None
    assert refine(two, [c("detectable_format:number_bullet_lists", num_bullets=2)]) == \
        "* Bees make honey.\n* They live in hives."
