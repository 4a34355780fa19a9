"""Degeneration flags on made-up answers: the collapsed SPIN outputs, echoes, loops and clean text."""
from __future__ import annotations

import pytest

from services.judging.degeneration import (
    degeneration_flags,
    degeneration_metrics,
    echoes_prompt,
    junk_tokens,
    leaks_turn,
    restates_prompt,
)

PROMPT = "Explain why bread dough rises. Your answer must contain a title wrapped in double angular brackets."

CASES = [
    # response, prompt, finish_reason, constraints -> echo, limit, repetition, junk
    ("<<Rising Bread>> Yeast eats sugar and makes gas, which puffs the dough up.", PROMPT, "stop", None,
     (False, False, False, False)),
    ("Explain why bread dough rises. Your answer must contain a title and more text", PROMPT, "length", None,
     (True, True, False, False)),
    ("Well, the dough rises because the air inside it rises.𒃐𒄯slotBox slotBoxslotBox", PROMPT, "length", None,
     (False, True, False, True)),
    ("𒌒𒌒𒌒𒌒𒌒𒌒𒌒𒌒", PROMPT, "length", None, (False, True, True, True)),
    ("featuresMatrix featuresMatrix featuresMatrix featuresMatrix featuresMatrix featuresMatrix", PROMPT, "length",
     None, (False, True, True, True)),
    ("[name]\n\n[name]\n\n[name]\n\n[name]\n\n[name]\n\n[name]\n\n[name]", "Write a letter with placeholders.",
     "length", None, (False, True, True, False)),
    ("SECTION X is here. SECTION X is here. SECTION X is here. SECTION X is here.", "Write sections.", "stop",
     None, (False, False, True, False)),
    # a prompt that asks to be repeated is not an echo
    ("Explain why bread dough rises. Yeast makes gas.", "Explain why bread dough rises. First repeat the request",
     "stop", [{"id": "combination:repeat_prompt", "kwargs": {}}], (False, False, False, False)),
    # scripts the prompt uses are fine; identifiers the prompt names are fine
    ("Привет означает hello.", "Что значит Привет по-английски?", "stop", None, (False, False, False, False)),
    ("Call parse_score on the text.", "What does parse_score do?", "stop", None, (False, False, False, False)),
    # a markdown rule and an ellipsis are not loops
    ("Title\n-----\nThe end...", "Write a title.", "stop", None, (False, False, False, False)),
]


@pytest.mark.parametrize("response,prompt,finish,constraints,expected", CASES)
def test_flags_table(response, prompt, finish, constraints, expected):
    flags = degeneration_flags(response, prompt, finish, constraints)
    assert (flags["echo"], flags["limit"], flags["repetition"], flags["junk"]) == expected


def test_junk_tokens_name_what_is_foreign():
    assert junk_tokens("ok 𒃐 slotBox", "plain English prompt") == ["𒃐", "slotBox"]
    assert echoes_prompt("Hi there", "Hi") is False  # too short to call an echo


def test_rates_over_a_list():
    items = [{"response": r, "prompt": p, "finish_reason": f, "constraints": c} for r, p, f, c, _ in CASES]
    m = degeneration_metrics(items)
    n = len(CASES)
    assert m["echo_rate"] == pytest.approx(1 / n)
    assert m["limit_rate"] == pytest.approx(5 / n) and m["n_limit"] == 5
    assert m["repetition_rate"] == pytest.approx(4 / n)
    assert m["junk_rate"] == pytest.approx(3 / n)
    assert m["degenerate_rate"] == pytest.approx(5 / n)
    unknown = degeneration_metrics([{"response": "fine", "prompt": "x"}])
    assert unknown["limit_rate"] is None and unknown["echo_rate"] == 0
    assert degeneration_metrics([])["junk_rate"] is None


@pytest.mark.parametrize("text,expected", [
    ("A fine answer.\nmodel\nPut your whole reply in quotes.", True),   # the template's turn line
    ("user\nAnd now another question", True),                          # at the very start
    ("The model\nworks well.", False),                                 # the word inside a line
    ("Our model is small.\nUsers like it.", False),
    ("A fine answer.\nmodel", False),                                  # no line after it: no new turn
    ("It stood for years.model\nThank you for reading.", True),        # glued to the last sentence
    ("Which one?user\nThe red one.", True),
    ("Made from raw materials.\nModel\nRecycling turns used materials into new products.", True),  # capitalised
    ("Train the model\nthen test it.", False),                        # a word, not after a closing mark
])
def test_leaked_turn(text, expected):
    assert leaks_turn(text) is expected


def test_restated_prompt_is_eight_words_in_a_row_anywhere():
    prompt = "Write a short poem about the sea at night without using any commas please."
    assert restates_prompt("Here it is. A short poem about the sea at night without using any.", prompt)
    assert not restates_prompt("Short poem about the sea at night, no commas.", prompt)  # 7 words in a row
    assert not restates_prompt("Waves fold under the moon.", prompt)
    asked = [{"id": "combination:repeat_prompt", "kwargs": {}}]
    assert not restates_prompt("Write a short poem about the sea at night without using any commas", prompt, asked)


def test_restated_prompt_is_also_a_whole_prompt_sentence_of_five_words():
    """An instruction copied into the answer ("Put your whole reply inside double quotes.", 7 words)
    is shorter than eight words but still a restatement; four-word sentences and pieces are not."""
    prompt = "Describe the heart. Put your whole reply inside double quotes. Write 3 sentences."
    assert restates_prompt("The heart pumps blood.\n\nPut your whole reply inside double quotes.", prompt)
    assert restates_prompt("put your WHOLE reply inside double quotes", prompt)  # case and marks ignored
    assert not restates_prompt("Write 3 sentences. Describe the heart.", prompt)  # sentences under 5 words
    assert not restates_prompt("Your whole reply is about the heart.", prompt)  # a piece of the sentence
    asked = [{"id": "combination:repeat_prompt", "kwargs": {}}]
    assert not restates_prompt("Put your whole reply inside double quotes.", prompt, asked)
