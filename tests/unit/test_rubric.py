"""Judge prompts and the parsers that read judge output: the Self-Rewarding rubric and the SPaR
refiner (verdicts and refinements)."""
from __future__ import annotations

import pytest

from services.judging.refiner import judge_messages, parse_refinement, parse_verdict, refine_messages
from services.judging.rubric import eft_target, mean_score, parse_score, rubric_messages

CHAT = [{"role": "user", "content": "Name a planet in lowercase."}]


@pytest.mark.parametrize("text,score", [
    ("Relevant and complete.\nScore: 4", 4.0),
    ("Score: 0", 0.0),
    ("Good.\nScore: 5.", 5.0),
    ("**Score:** 3", 3.0),
    ("Total score = 2/5", 2.0),
    ("Final Score: 4.5", 4.5),            # decimals are kept
    ("Nice.\n  score:3  ", 3.0),
    ("Score: 4\nSo overall...\nScore: 4", 4.0),  # repeated but consistent
    ("No score given.", None),            # missing
    ("", None),
    ("Score: 3\nOn reflection:\nScore: 4", None),  # several conflicting scores
    ("Score: 6", None),                   # out of range
    ("Score: -1", None),
    ("Score: 10/10", None),
    ("The score: 4 points because it is good", None),  # not a score line on its own
    ("I would give it a Score: 4 overall", None),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


@pytest.mark.parametrize("scores,mean", [
    ([4.0, None, 2.0], 3.0),
    ([None, None], None),   # never 0 when nothing parsed
    ([], None),
    ([0.0], 0.0),
])
def test_mean_score(scores, mean):
    assert mean_score(scores) == mean


def test_rubric_messages_hold_request_response_and_format():
    messages = rubric_messages(CHAT, "mars")
    assert [m["role"] for m in messages] == ["user"]
    text = messages[0]["content"]
    assert "Name a planet in lowercase." in text and "<response>\nmars\n</response>" in text
    assert "Score: N" in text and "5th point" in text


def test_rubric_messages_label_multi_turn_chats():
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a planet."}]
    text = rubric_messages(chat, "Mars")[0]["content"]
    assert "User: Hi" in text and "Assistant: Hello!" in text


def test_rubric_messages_reject_bad_chats():
    with pytest.raises(ValueError, match="prompt_messages"):
        rubric_messages([], "x")
    with pytest.raises(ValueError, match=r"prompt_messages\[0\]"):
        rubric_messages([{"text": "hi"}], "x")


def test_eft_target_round_trips_through_the_parser():
    assert parse_score(eft_target("Fine answer.", 3)) == 3.0
    with pytest.raises(ValueError):
        eft_target("x", 6)


@pytest.mark.parametrize("text,verdict", [
    ("1. lowercase: yes\nVerdict: yes", True),
    ("The response uses a capital.\nVerdict: no", False),
    ("**Verdict:** No.", False),
    ("Final verdict: YES", True),
    ("Verdict: yes\nVerdict: yes", True),
    ("Verdict: yes\nWait, it has a capital.\nVerdict: no", None),  # flips
    ("It looks fine to me.", None),
    ("Verdict: maybe", None),
    ("", None),
])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) is verdict


@pytest.mark.parametrize("text,refined", [
    ("Refined response:\nmars", "mars"),
    ("The fix is to lowercase it.\nRefined response: mars is red", "mars is red"),
    ("**Refined response:**\n* one\n* two", "* one\n* two"),
    ("just the new answer", "just the new answer"),
    ("Refined response:\n   ", None),     # empty refinement
    ("", None),
    ("Refined response:\nThe response is fine.\nVerdict: yes", None),  # judged instead of refining
])
def test_parse_refinement(text, refined):
    assert parse_refinement(text) == refined


def test_refiner_prompts_carry_everything_they_need():
    judge = judge_messages(CHAT, "Mars")[0]["content"]
    assert "Mars" in judge and "Verdict: yes" in judge and "Verdict: no" in judge
    refine = refine_messages(CHAT, "Mars", "It uses a capital letter.\nVerdict: no")[0]["content"]
    assert "It uses a capital letter." in refine and "Refined response:" in refine and "Mars" in refine
