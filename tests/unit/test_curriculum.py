"""The built-in curriculum: every gold response passes its own constraints, splits are
topic-disjoint, the build is deterministic, and EFT examples are in the rubric's format."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from services.judging import verifier
from services.curriculum.generator import (
    LAYOUT_IDS, MAX_GOLD_WORDS, build_curriculum, main, read_jsonl, split_topics, write_jsonl,
)
from services.curriculum.topics import TOPICS
from services.judging.rubric import parse_score


@pytest.fixture(scope="module")
def curriculum():
    return build_curriculum(seed=0, n_train=200, n_heldout=60, n_eft=36)


def test_sizes_and_item_shape(curriculum):
    assert len(curriculum["train"]) == 200 and len(curriculum["heldout"]) == 60 and len(curriculum["eft"]) == 36
    for item in curriculum["train"] + curriculum["heldout"]:
        assert set(item) == {"prompt", "reference", "constraints", "topic"}
        assert verifier.validate_constraints(item["constraints"]) == []
        assert 1 <= len(item["constraints"]) <= 3


def test_every_gold_response_passes_strictly(curriculum):
    for item in curriculum["train"] + curriculum["heldout"]:
        verdict = verifier.verify(item["reference"], item["constraints"], item["prompt"])
        assert verdict.strict, item


def test_gold_responses_are_short(curriculum):
    for item in curriculum["train"] + curriculum["heldout"]:
        assert verifier.count_words(item["reference"]) <= MAX_GOLD_WORDS


def test_coverage_of_instructions_and_topics(curriculum):
    ids = Counter(c["id"] for item in curriculum["train"] for c in item["constraints"])
    assert len(ids) >= 15
    assert len(TOPICS) >= 40 and len({t["name"] for t in TOPICS}) == len(TOPICS)
    assert any(len(item["constraints"]) == 3 for item in curriculum["train"])


def test_combinations_respect_ifeval_conflicts(curriculum):
    table = verifier.conflicts()
    for item in curriculum["train"] + curriculum["heldout"]:
        ids = [c["id"] for c in item["constraints"]]
        assert len(set(ids)) == len(ids)
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                assert b not in table[a], (a, b)
        assert sum(i in LAYOUT_IDS for i in ids) <= 1


def test_train_and_heldout_share_no_topic(curriculum):
    train = {item["topic"] for item in curriculum["train"]}
    heldout = {item["topic"] for item in curriculum["heldout"]}
    assert train and heldout and not train & heldout
    train_topics, heldout_topics = split_topics(0)
    assert {t["name"] for t in train_topics}.isdisjoint(t["name"] for t in heldout_topics)


def test_prompts_are_unique_and_comma_free(curriculum):
    prompts = [item["prompt"] for item in curriculum["train"] + curriculum["heldout"]]
    assert len(set(prompts)) == len(prompts)
    assert not any("," in p for p in prompts)


def test_same_seed_same_curriculum_other_seed_differs(curriculum):
    again = build_curriculum(seed=0, n_train=200, n_heldout=60, n_eft=36)
    assert json.dumps(again, sort_keys=True) == json.dumps(curriculum, sort_keys=True)
    other = build_curriculum(seed=1, n_train=20, n_heldout=5, n_eft=0)
    assert [i["prompt"] for i in other["train"]] != [i["prompt"] for i in curriculum["train"][:20]]


def test_eft_examples_cover_every_score_in_rubric_format(curriculum):
    scores = []
    train_prompts = {item["prompt"] for item in curriculum["train"]}
    for example in curriculum["eft"]:
        assert set(example) == {"messages", "response"}
        assert example["messages"][0]["role"] == "user" and "<response>" in example["messages"][0]["content"]
        scores.append(parse_score(example["response"]))
        # EFT judges training prompts only, so the judge never sees held-out prompts.
        request = example["messages"][0]["content"].split("<request>\n")[1].split("\n</request>")[0]
        assert request in train_prompts
    assert set(scores) == {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}


def test_rejects_negative_sizes():
    with pytest.raises(ValueError, match="n_train"):
        build_curriculum(n_train=-1)


def test_jsonl_round_trip_and_cli(tmp_path, curriculum):
    path = write_jsonl(curriculum["heldout"], tmp_path / "x" / "h.jsonl")
    assert read_jsonl(path) == curriculum["heldout"]
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_jsonl(tmp_path / "bad.jsonl")
    assert main(["--out", str(tmp_path / "cli"), "--n-train", "5", "--n-heldout", "3", "--n-eft", "2"]) == 0
    assert [len(read_jsonl(tmp_path / "cli" / f"curriculum_{s}.jsonl")) for s in ("train", "heldout", "eft")] == [5, 3, 2]
