"""The verifier: lm_eval's IFEval checkers behind our constraint format, offline NLTK data,
exact answers and the binary reward."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.judging import verifier
from services.judging.verifier import binary_reward, exact_answer_reward, validate_constraints, verify

REPO = Path(__file__).resolve().parents[2]


def c(ident: str, **kwargs) -> dict:
    return {"id": ident, "kwargs": kwargs}


# (constraint, a response that follows it, one that does not)
CASES = [
    (c("change_case:english_lowercase"), "the cat sat on the warm mat all day long.", "The cat sat on the warm mat all day long."),
    (c("change_case:english_capital"), "THE CAT SAT ON THE WARM MAT ALL DAY LONG.", "THE CAT SAT ON THE WARM MAT all day long."),
    (c("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least"),
     "The CAT sat on the WARM mat.", "The CAT sat on the warm mat."),
    (c("punctuation:no_comma"), "Bees make honey and wax.", "Bees make honey, wax and more."),
    (c("length_constraints:number_words", num_words=5, relation="less than"), "Bees make honey.", "Bees make honey from nectar they collect."),
    (c("length_constraints:number_words", num_words=5, relation="at least"), "Bees make honey from nectar.", "Bees make honey."),
    (c("length_constraints:number_sentences", num_sentences=2, relation="at least"), "Bees fly. Dr. Smith keeps bees.", "Dr. Smith keeps bees."),
    (c("length_constraints:number_sentences", num_sentences=2, relation="less than"), "Mr. Lee keeps bees in the U.S. today.", "Bees fly. They sting."),
    (c("length_constraints:number_paragraphs", num_paragraphs=2), "Bees fly.\n\n***\n\nThey sting.", "Bees fly.\n\nThey sting."),
    (c("detectable_format:title"), "<<Bees>>\nBees fly.", "Bees fly."),
    (c("detectable_format:number_bullet_lists", num_bullets=2), "* Bees fly.\n* They sting.", "* Bees fly.\n* They sting.\n* They dance."),
    (c("detectable_format:number_highlighted_sections", num_highlights=2), "Bees *fly* and *sting*.", "Bees *fly* and sting."),
    (c("detectable_format:json_format"), '```json\n{"bees": "fly"}\n```', "bees: fly"),
    (c("detectable_format:multiple_sections", section_spliter="Section", num_sections=2),
     "Section 1\nBees fly.\nSection 2\nThey sting.", "Section 1\nBees fly. They sting."),
    (c("detectable_format:constrained_response"), "My answer is yes.", "Yes."),
    (c("startend:end_checker", end_phrase="Any other questions?"), "Bees fly. Any other questions?", "Any other questions? Bees fly."),
    (c("startend:quotation"), '"Bees fly."', "Bees fly."),
    (c("keywords:existence", keywords=["honey", "wax"]), "Bees make honey and wax.", "Bees make honey."),
    (c("keywords:forbidden_words", forbidden_words=["very"]), "Bees are busy.", "Bees are very busy."),
    (c("keywords:letter_frequency", letter="z", let_frequency=2, let_relation="at least"), "Buzz buzz.", "Bees hum."),
    (c("keywords:frequency", keyword="bee", frequency=2, relation="at least"), "A bee and a bee.", "A bee and a wasp."),
    (c("detectable_content:postscript", postscript_marker="P.S."), "Bees fly.\nP.S. They sting.", "Bees fly."),
    (c("detectable_content:number_placeholders", num_placeholders=2), "Meet [name] at [place].", "Meet [name] soon."),
    (c("combination:repeat_prompt", prompt_to_repeat="Tell me about bees."), "Tell me about bees. Bees fly.", "Bees fly."),
    (c("combination:two_responses"), "Bees fly.\n******\nBees sting.", "Bees fly.\n******\nBees fly."),
]


@pytest.mark.parametrize("constraint,good,bad", CASES, ids=[f"{i}-{case[0]['id']}" for i, case in enumerate(CASES)])
def test_each_instruction_passes_and_fails(constraint, good, bad):
    assert verify(good, [constraint]).strict is True
    verdict = verify(bad, [constraint])
    assert verdict.strict is False
    assert verdict.strict_per_instruction == [False]


def test_cases_cover_every_curriculum_instruction():
    from services.curriculum.generator import USED_IDS

    assert set(USED_IDS) <= {case[0]["id"] for case in CASES}
    assert len(USED_IDS) >= 15


@pytest.mark.parametrize("response,constraints,strict,loose", [
    # A chatty first line breaks lowercase; dropping the first line (loose) fixes it.
    ("Sure!\nthe cat sat on the mat.", [c("change_case:english_lowercase")], False, True),
    # A trailing sign-off breaks the ending; dropping the last line fixes it.
    ("Bees fly. Any other questions?\nHope this helps!", [c("startend:end_checker", end_phrase="Any other questions?")], False, True),
    # Markdown bold on the title line breaks the quotation; loose strips asterisks.
    ('**"Bees fly."**', [c("startend:quotation")], False, True),
    # Nothing loose can fix a comma in the middle.
    ("Sure!\nBees, wasps.\nBye", [c("punctuation:no_comma")], False, False),
    ("", [c("punctuation:no_comma")], False, False),  # IFEval fails empty responses outright
])
def test_strict_vs_loose(response, constraints, strict, loose):
    verdict = verify(response, constraints)
    assert (verdict.strict, verdict.loose) == (strict, loose)


def test_per_instruction_lists_follow_constraint_order():
    constraints = [c("punctuation:no_comma"), c("detectable_format:title"), c("keywords:existence", keywords=["bees"])]
    verdict = verify("Bees fly, and sting.", constraints)
    assert verdict.strict_per_instruction == [False, False, True]
    assert verdict.loose_per_instruction == [False, False, True]
    assert verdict.strict is False and verdict.loose is False


def test_no_constraints_is_a_vacuous_pass():
    assert verify("anything", []).strict is True


def test_none_valued_kwargs_from_ifeval_rows_are_dropped():
    row = c("punctuation:no_comma", num_words=None, relation=None)
    assert validate_constraints([row]) == []
    assert verify("No commas here.", [row]).strict is True


@pytest.mark.parametrize("constraints,needle", [
    ("nope", "must be a list"),
    ([{"kwargs": {}}], "constraints[0] must be an object"),
    ([c("made:up")], "constraints[0].id 'made:up'"),
    ([c("length_constraints:number_words", num_words=5)], "constraints[0].kwargs.relation is required"),
    ([c("length_constraints:number_words", num_words=0, relation="at least")], "num_words must be an integer >= 1"),
    ([c("length_constraints:number_words", num_words=True, relation="at least")], "num_words must be an integer >= 1"),
    ([c("length_constraints:number_words", num_words=5, relation="at most")], "relation must be one of"),
    ([c("punctuation:no_comma", extra=1)], "kwargs.extra is not a parameter"),
    ([c("keywords:existence", keywords=[])], "keywords must be a non-empty list"),
    ([c("keywords:existence", keywords=["(bees"])], "not a valid regular expression"),
    ([c("keywords:letter_frequency", letter="ab", let_frequency=2, let_relation="at least")], "single ASCII letter"),
    ([c("language:response_language", language="xx")], "ISO 639-1"),
    ([c("length_constraints:nth_paragraph_first_word", num_paragraphs=2, nth_paragraph=3, first_word="a")], "must be <= num_paragraphs"),
    ([c("punctuation:no_comma"), c("punctuation:no_comma")], "repeat the instruction ids"),
    ([{"id": "punctuation:no_comma", "kwargs": {}, "weight": 2}], "unknown fields ['weight']"),
])
def test_validate_constraints_names_the_bad_field(constraints, needle):
    errors = validate_constraints(constraints)
    assert any(needle in e for e in errors), errors


def test_verify_refuses_invalid_constraints():
    with pytest.raises(ValueError, match="relation is required"):
        verify("x", [c("length_constraints:number_words", num_words=5)])


def test_kwarg_table_matches_lm_eval_registry():
    registry = verifier._ifeval().registry.INSTRUCTION_DICT
    assert set(verifier.KWARG_KINDS) == set(registry)
    for ident, kinds in verifier.KWARG_KINDS.items():
        assert set(kinds) == set(registry[ident](ident).get_instruction_args_keys()), ident


@pytest.mark.parametrize("response,answer,reward", [
    ("So the total is 1,234.", "1234", 1.0),
    ("Adding them gives 12 and then 3 more makes 15.", "15", 1.0),
    ("It is 15, not 16.", "15", 0.0),  # the final number counts
    ("The answer is \\boxed{0.5} (from 3 halves)", "0.50", 1.0),
    ("Costs $42.", "$42", 1.0),
    ("No number here.", "7", 0.0),
    ("  PARIS  ", "paris", 1.0),
    ("Let me think.\nThe answer is Paris.", "Paris", 1.0),
    ("Let me think.\nParis", "paris", 1.0),
    ("It could be Lyon or Paris.", "Paris", 0.0),
    ("", "Paris", 0.0),
])
def test_exact_answer_reward(response, answer, reward):
    assert exact_answer_reward(response, answer) == reward


@pytest.mark.parametrize("response,constraints,answer,reward", [
    ("bees fly", [c("change_case:english_lowercase")], None, 1.0),
    ("Bees fly", [c("change_case:english_lowercase")], None, 0.0),
    ("the answer is 4", [c("change_case:english_lowercase")], "4", 1.0),
    ("the answer is 5", [c("change_case:english_lowercase")], "4", 0.0),
    ("The answer is 4", None, "4", 1.0),
    ("anything", None, None, None),
    ("anything", [], "", None),
])
def test_binary_reward(response, constraints, answer, reward):
    assert binary_reward(response, constraints=constraints, answer=answer) == reward


def test_import_and_verify_never_download(tmp_path):
    """A fresh interpreter with an empty project NLTK dir and nltk.download patched to raise:
    importing and using the verifier must build punkt_tab locally, never download."""
    script = (
        "import nltk\n"
        "def boom(*a, **k): raise RuntimeError('network download attempted')\n"
        "nltk.download = boom\n"
        "from services.judging.verifier import verify, count_sentences\n"
        "assert count_sentences('Dr. Smith arrived. He sat down.') == 2\n"
        "v = verify('One. Two. Three.', [{'id': 'length_constraints:number_sentences',"
        " 'kwargs': {'num_sentences': 3, 'relation': 'at least'}}])\n"
        "assert v.strict, v\n"
        "print('ok')\n"
    )
    env = {**os.environ, "AUTODIDACT_NLTK_DATA": str(tmp_path / "nltk"), "NLTK_DATA": str(tmp_path / "empty")}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
    assert (tmp_path / "nltk" / "tokenizers" / "punkt_tab" / "english" / "abbrev_types.txt").exists()


def test_nltk_data_cli_is_idempotent(tmp_path, monkeypatch):
    import nltk

    from shared.nltk_data import ensure_punkt_tab, main

    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))  # undo our path change afterwards

    assert main([str(tmp_path)]) == 0
    first = (tmp_path / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").read_bytes()
    ensure_punkt_tab(tmp_path)
    assert (tmp_path / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").read_bytes() == first
