"""Pure pieces of the ReST-EM, Self-Rewarding and SPaR recipes, and their config validation."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest

from services.methods import get_recipe, parse_config
from services.methods.rest_em import RestEMConfig, select_correct
from services.methods.self_instruct import collect_new_prompts, round_requests
from services.methods.self_reward import (
    SelfRewardConfig, balance_lengths, best_worst_pairs, dedupe, instruct_messages, parse_new_prompt, task_openers,
)
from services.methods.spar import SPaRConfig, refined_pairs


def test_select_correct_keeps_at_most_k_distinct_correct_per_prompt():
    samples = [{"prompt_id": 1, "index": i, "text": t, "reward": r} for i, (t, r) in enumerate(
        [("a", 1.0), ("b", 0.0), ("a ", 1.0), ("c", 1.0), ("d", 1.0), ("e", None)])]
    samples.append({"prompt_id": 2, "index": 0, "text": "z", "reward": 0.0})
    kept, counts = select_correct(samples, k=2)
    assert [(s["prompt_id"], s["text"]) for s in kept] == [(1, "a"), (1, "c")]
    assert counts == {"correct": 4, "kept": 2, "prompts_with_correct": 1, "truncated": 0}


def test_select_correct_drops_answers_cut_at_the_token_limit():
    samples = [{"prompt_id": 1, "index": i, "text": t, "reward": 1.0, "finish_reason": f}
               for i, (t, f) in enumerate([("cut", "length"), ("whole", "stop"), ("old row", "")])]
    kept, counts = select_correct(samples, k=5)
    assert [s["text"] for s in kept] == ["whole", "old row"]
    assert counts == {"correct": 3, "kept": 2, "prompts_with_correct": 1, "truncated": 1}
    kept, counts = select_correct(samples, k=5, keep_truncated=True)
    assert len(kept) == 3 and counts["truncated"] == 0


def test_select_correct_drops_unsound_answers_when_asked():
    samples = [{"prompt_id": 1, "index": i, "text": t, "reward": 1.0} for i, t in enumerate(["junk", "fine", "fine 2"])]
    kept, counts = select_correct(samples, k=1, sound=lambda x: x["text"] != "junk")
    assert [s["text"] for s in kept] == ["fine"]  # the unsound one does not take the prompt's place
    assert counts["unsound"] == 1 and counts["kept"] == 1
    assert "unsound" not in select_correct(samples, k=1)[1]


@pytest.mark.parametrize("text,constraints,ok", [
    ("the lake is calm. the birds sing.", "LOWER", True),
    ("the lake is calm.\nmodel\nwrite about the lake.", "LOWER", False),  # a new turn inside it
    ("the lake is calm.getMainUI the birds sing.", "LOWER", False),  # an identifier glued on
    ("write about the lake in lowercase and say why it is calm today. it is.", "LOWER", False),  # restated
    # checked by its answer only: restating the problem is part of solving it, junk is not
    ("A train goes 60 miles per hour for 3 hours, so it goes 180 miles.", None, True),
    ("It goes 180 miles.getMainUI", None, False),
])
def test_sound_correct_answers(text, constraints, ok):
    from services.judging.degeneration import sound

    question = ("write about the lake in lowercase and say why it is calm today." if constraints else
                "A train goes 60 miles per hour for 3 hours, so how far does it go?")
    assert sound(text, question, LOWER if constraints else []) is ok


LOWER = [{"id": "change_case:english_lowercase", "kwargs": {}}]


class RestData:
    """The RoundData reads ReST-EM's training job makes."""
    round_number, total_rounds, base_version_id = 1, 1, 1

    def __init__(self, samples, rewards, prompts):
        self._samples, self._rewards, self._prompts = samples, rewards, prompts

    def samples(self, role):
        return self._samples

    def judgments(self, kind, role=None):
        return [{"sample_id": sid, "vote_index": 0, "score": r} for sid, r in self._rewards.items()]

    def prompts(self, ids):
        return {i: self._prompts[i] for i in ids}


def test_rest_em_can_repair_the_prompts_it_never_solved():
    """repair_failed: a prompt without a kept sample gets the verified fix of its first failed answer
    that ended (never of one cut at the limit); a prompt with a kept sample, or without constraints,
    or whose failures have no fix, gets nothing; the repaired answer trains as an ended response."""
    from services.judging import verifier
    from services.methods.rest_em import repairs, training_job

    def prompt(constraints, text="write about the lake in lowercase"):
        return {"messages": [{"role": "user", "content": text}], "constraints": constraints, "answer": None}

    no_fix = [{"id": "keywords:letter_frequency", "kwargs": {"letter": "z", "let_frequency": 9, "let_relation": "at least"}}]
    prompts = {1: prompt(LOWER), 2: prompt(LOWER), 3: prompt([]), 4: prompt(no_fix)}
    rows = [(1, 0, "The Lake Went On And", "length", 0.0),  # cut: never repaired
            (1, 1, "The Lake Is Calm.", "stop", 0.0),  # the first failure that ended: repaired
            (1, 2, "The Pond.", "stop", 0.0),
            (2, 0, "the lake is calm.", "stop", 1.0),  # solved: kept as it is, no repair
            (2, 1, "The Lake.", "stop", 0.0),
            (3, 0, "An Answer.", "stop", 0.0),  # no constraints
            (4, 0, "the lake", "stop", 0.0)]  # no mechanical fix
    samples = [{"id": 10 * pid + i, "prompt_id": pid, "index": i, "text": t, "finish_reason": f}
               for pid, i, t, f, _ in rows]
    rewards = {10 * pid + i: r for pid, i, _, _, r in rows}
    out = repairs([{**x, "reward": rewards[x["id"]]} for x in samples], {1: prompts[1], 3: prompts[3], 4: prompts[4]})
    assert out == [{"prompt_id": 1, "index": 1, "text": "the lake is calm."}]
    assert verifier.verify(out[0]["text"], LOWER, "").strict

    data = RestData(samples, rewards, prompts)
    job = training_job(data, RestEMConfig(repair_failed=True), "policy")
    assert [(i["response"], i["ended"]) for i in job.items] == [("the lake is calm.", True), ("the lake is calm.", True)]
    assert job.stats["repaired"] == 1 and job.stats["kept"] == 1
    plain = training_job(data, RestEMConfig(), "policy")
    assert len(plain.items) == 1 and "repaired" not in plain.stats
    assert parse_config(RestEMConfig, {"repair_failed": 1})[1][0]["loc"] == ["config", "repair_failed"]


def test_rest_em_trains_only_sound_correct_answers_unless_told():
    from services.methods.rest_em import training_job

    question = "write about the lake in lowercase and say why it is calm today."
    prompts = {1: {"messages": [{"role": "user", "content": question}], "constraints": LOWER, "answer": None}}
    rows = [(0, "the lake is calm.\nmodel\nwrite a poem."), (1, "the lake is calm. the wind is gone.")]
    samples = [{"id": i, "prompt_id": 1, "index": i, "text": t, "finish_reason": "stop"} for i, t in rows]
    data = RestData(samples, {0: 1.0, 1: 1.0}, prompts)
    job = training_job(data, RestEMConfig(max_correct_per_prompt=1), "policy")
    assert [i["response"] for i in job.items] == ["the lake is calm. the wind is gone."]
    assert job.stats["unsound"] == 1 and job.stats["correct"] == 2
    loose = training_job(data, RestEMConfig(max_correct_per_prompt=1, keep_unsound=True), "policy")
    assert [i["response"] for i in loose.items] == ["the lake is calm.\nmodel\nwrite a poem."]
    assert parse_config(RestEMConfig, {"keep_unsound": "no"})[1][0]["loc"] == ["config", "keep_unsound"]


@pytest.mark.parametrize("text,ok", [
    ("The Lake Is Calm. Birds Sing.", True),
    ('"The Lake Is Calm."\nmodel\nWrite about the lake.', False),  # a new turn begun inside the answer
    ("Write about the lake in lowercase and say why it is calm today. It is.", False),  # restates the prompt
    ("The Lake Is Calm And Clear Today. " * 4, False),  # runaway repetition
    ("The Lake Is Calm.\n\nThat Is All For Now.\nThat is all for now.\nThat Is All For Now.", False),  # a line x3
    ("The Lake Is Calm.\n\nThat Is All For Now.\nThat Is All For Now.", True),  # twice is not yet a loop
])
def test_only_answers_that_are_otherwise_sound_are_repaired(text, ok):
    from services.judging.degeneration import editable
    from services.methods.rest_em import repairs

    question = "Write about the lake in lowercase and say why it is calm today."
    assert editable(text, question, LOWER) is ok
    asked = LOWER + [{"id": "combination:repeat_prompt", "kwargs": {"prompt_to_repeat": question}}]
    assert editable("Write about the lake in lowercase and say why it is calm today. It is.", question, asked)
    # ReST-EM repairs only what is editable
    prompts = {1: {"messages": [{"role": "user", "content": question}], "constraints": LOWER}}
    got = repairs([{"prompt_id": 1, "index": 0, "text": text, "reward": 0.0, "finish_reason": "stop"}], prompts)
    assert bool(got) is ok


ONE_PAIR = {"pairs": 1, "cut_best_passed_over": 0, "rejected_longer": 0, "chosen_words_mean": 1.0,
            "rejected_words_mean": 1.0}
NO_PAIR = {"pairs": 0, "cut_best_passed_over": 0, "rejected_longer": 0, "chosen_words_mean": None,
           "rejected_words_mean": None}


@pytest.mark.parametrize("cands,expected,stats", [
    ({1: [(0, "x", 4.0), (1, "y", 1.0), (2, "w", 2.5)]}, [("x", "y", 3.0)], {**ONE_PAIR, "ties_dropped": 0, "unscored_prompts": 0}),
    ({1: [(0, "x", 3.0), (1, "y", 3.0)]}, [], {**NO_PAIR, "ties_dropped": 1, "unscored_prompts": 0}),
    ({1: [(0, "x", None), (1, "y", 2.0)]}, [], {**NO_PAIR, "ties_dropped": 0, "unscored_prompts": 1}),
    ({1: [(0, "x", 5.0), (1, "y", None), (2, "v", 0.0)]}, [("x", "v", 5.0)], {**ONE_PAIR, "ties_dropped": 0, "unscored_prompts": 0}),
])
def test_best_worst_pairs_drop_ties_and_unscored(cands, expected, stats):
    pairs, counts = best_worst_pairs(cands)
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == expected
    assert counts == stats


def test_best_worst_pairs_take_the_tied_extremes_closest_in_length():
    # two answers share the top score, two the bottom one: the first-of-each pair would reject the
    # long answer in favour of the short one; length control pairs the two of equal length instead
    cands = {7: [(0, "short", 5.0), (1, "a b c d e f", 5.0), (2, "u v w x y z q", 1.0), (3, "one two three four five six", 1.0),
                 (4, "mid mid", 3.0)]}
    pairs, counts = best_worst_pairs(cands)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a b c d e f", "one two three four five six")]
    assert counts["rejected_longer"] == 0 and counts["chosen_words_mean"] == counts["rejected_words_mean"] == 6
    pairs, counts = best_worst_pairs(cands, length_control=False)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("short", "u v w x y z q")]
    assert counts["rejected_longer"] == 1 and (counts["chosen_words_mean"], counts["rejected_words_mean"]) == (1, 7)
    # equal length differences: the lowest indices win, so the choice is deterministic
    pairs, _ = best_worst_pairs({1: [(3, "b b", 2.0), (1, "a a", 2.0), (2, "z", 0.0), (0, "y", 0.0)]})
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ("a a", "y")
    assert best_worst_pairs({})[1]["chosen_words_mean"] is None


def test_best_worst_pairs_never_choose_an_answer_cut_at_the_limit():
    cands = {1: [(0, "cut but scored best", 5.0), (1, "ended", 3.0), (2, "worst", 1.0)],
             2: [(0, "cut", 4.0), (1, "ended low", 1.0), (2, "also low", 1.0)],
             3: [(0, "ended best", 4.0), (1, "cut worst", 0.0)]}
    cut = frozenset({(1, 0), (2, 0), (3, 1)})
    pairs, counts = best_worst_pairs(cands, cut=cut)
    # prompt 1: the next best answer that ended is chosen; prompt 2: nothing that ended beats the
    # worst, so no pair; prompt 3: a cut answer may still be rejected
    assert [(p["prompt_id"], p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [
        (1, "ended", "worst", 2.0), (3, "ended best", "cut worst", 4.0)]
    assert counts["cut_best_passed_over"] == 2 and counts["ties_dropped"] == 1
    assert [p["chosen"] for p in best_worst_pairs(cands)[0]] == ["cut but scored best", "cut", "ended best"]


def test_self_reward_round_pairs_read_the_cut_answers_from_finish_reason():
    from services.methods.self_reward import round_pairs

    class Data:  # the three RoundData reads round_pairs makes
        def samples(self, role):
            return [{"id": 10 + i, "prompt_id": 1, "index": i, "text": t, "finish_reason": f}
                    for i, (t, f) in enumerate([("long cut", "length"), ("ended", "stop"), ("bad", "stop")])]

        def judgments(self, kind, role=None):
            return [{"sample_id": sid, "score": s} for sid, s in ((10, 5), (10, 5), (11, 3), (12, 1), (12, None))]

        def prompts(self, ids):
            assert ids == [1]
            return {1: {"messages": [{"role": "user", "content": "Write a line."}], "constraints": []}}

    pairs, counts = round_pairs(Data(), SelfRewardConfig())
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("ended", "bad")]
    assert counts["cut_best_passed_over"] == 1 and counts["judgments_unparsed"] == 1
    assert counts["unsound_best_passed_over"] == 0
    pairs, _ = round_pairs(Data(), SelfRewardConfig(chosen_must_end=False))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("long cut", "bad")]


def test_self_reward_never_chooses_an_unsound_answer():
    from services.methods.self_reward import round_pairs

    question = "Write about the lake in lowercase and say why it is calm today."
    texts = ["the lake is calm.\nmodel\nwrite about the lake.",  # best score, but a new turn inside it
             "the lake is calm because the wind has dropped.",  # the next best: sound, chosen
             "The Lake Is Calm."]

    class Data:
        def samples(self, role):
            return [{"id": 10 + i, "prompt_id": 1, "index": i, "text": t, "finish_reason": "stop"}
                    for i, t in enumerate(texts)]

        def judgments(self, kind, role=None):
            return [{"sample_id": 10 + i, "score": s} for i, s in enumerate((5, 4, 1))]

        def prompts(self, ids):
            return {1: {"messages": [{"role": "user", "content": question}], "constraints": LOWER}}

    pairs, counts = round_pairs(Data(), SelfRewardConfig())
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [(texts[1], texts[2], 3)]
    assert counts["unsound_best_passed_over"] == 1 and counts["cut_best_passed_over"] == 0
    loose, counts = round_pairs(Data(), SelfRewardConfig(chosen_must_be_sound=False))
    assert [p["chosen"] for p in loose] == [texts[0]] and "unsound_best_passed_over" not in counts
    assert parse_config(SelfRewardConfig, {"chosen_must_be_sound": 1})[1][0]["loc"] == ["config", "chosen_must_be_sound"]


def test_best_worst_pairs_pass_over_unsound_answers_but_may_reject_them():
    cands = {1: [(0, "unsound best", 5.0), (1, "sound", 2.0), (2, "worst", 1.0)],
             2: [(0, "unsound", 4.0), (1, "low", 1.0), (2, "low too", 1.0)],  # nothing sound beats the worst
             3: [(0, "sound best", 4.0), (1, "unsound worst", 0.0)]}
    pairs, counts = best_worst_pairs(cands, unsound=frozenset({(1, 0), (2, 0), (3, 1)}))
    assert [(p["prompt_id"], p["chosen"], p["rejected"]) for p in pairs] == [
        (1, "sound", "worst"), (3, "sound best", "unsound worst")]
    assert counts["unsound_best_passed_over"] == 2 and counts["cut_best_passed_over"] == 0
    # an answer both cut and unsound counts as cut only
    _, counts = best_worst_pairs(cands, cut=frozenset({(1, 0)}), unsound=frozenset({(1, 0)}))
    assert (counts["cut_best_passed_over"], counts["unsound_best_passed_over"]) == (1, 0)


def _pair(pid: int, chosen_words: int, rejected_words: int) -> dict:
    return {"prompt_id": pid, "chosen": "c " * chosen_words, "rejected": "r " * rejected_words}


@pytest.mark.parametrize("share,kept", [
    # 4 pairs reject the longer answer (gaps 1, 5, 9, 2), 1 chooses it, 1 is level
    (1.0, [1, 2, 3, 4, 5, 6]),
    (0.8, [1, 2, 3, 4, 5, 6]),         # 4 of 5 is exactly the share
    (0.75, [1, 2, 4, 5, 6]),           # 3 of 4: the gap of 9 goes first
    (0.7, [1, 4, 5, 6]),               # 2.33 allowed -> 2: the gap of 5 goes too
    (0.6, [1, 5, 6]),                  # 1.5 allowed -> 1: only the smallest gap stays
    (0.5, [1, 5, 6]),                  # as many of each: the pair with gap 1 stays
])
def test_balance_lengths_drops_the_widest_gaps_of_the_side_over_the_share(share, kept):
    pairs = [_pair(1, 3, 4), _pair(2, 3, 8), _pair(3, 1, 10), _pair(4, 5, 7), _pair(5, 9, 2), _pair(6, 4, 4)]
    out, counts = balance_lengths(pairs, share)
    assert [p["prompt_id"] for p in out] == kept
    assert counts == {"dropped_for_length": 6 - len(kept)}


def test_balance_lengths_works_on_either_side_and_on_one_sided_rounds():
    # chosen longer in three pairs, rejected longer in one: the chosen-longer side is trimmed
    pairs = [_pair(1, 9, 1), _pair(2, 4, 3), _pair(3, 6, 2), _pair(4, 1, 2)]
    assert [p["prompt_id"] for p in balance_lengths(pairs, 0.5)[0]] == [2, 4]
    # every pair rejects the longer answer: nothing on the other side lets any stay
    assert balance_lengths([_pair(1, 1, 2), _pair(2, 1, 3)], 0.6) == ([], {"dropped_for_length": 2})
    assert balance_lengths([_pair(1, 2, 2)], 0.5)[0] == [_pair(1, 2, 2)]
    assert balance_lengths([], 0.5) == ([], {"dropped_for_length": 0})


def test_self_reward_round_pairs_report_the_counts_of_the_balanced_pairs():
    from services.methods.self_reward import round_pairs

    class Data:  # prompt 1: rejected longer (gap 4); 2: rejected longer (gap 1); 3: chosen longer
        texts = {1: ("a b", "a b c d e f"), 2: ("a b", "a b c"), 3: ("a b c d", "a")}

        def samples(self, role):
            return [{"id": 10 * pid + i, "prompt_id": pid, "index": i, "text": t, "finish_reason": "stop"}
                    for pid, pair in self.texts.items() for i, t in enumerate(pair)]

        def judgments(self, kind, role=None):
            return [{"sample_id": 10 * pid + i, "score": 5 - 4 * i} for pid in self.texts for i in (0, 1)]

        def prompts(self, ids):
            return {pid: {"messages": [{"role": "user", "content": "Say it."}]} for pid in ids}

    pairs, counts = round_pairs(Data(), SelfRewardConfig())
    assert len(pairs) == 3 and counts["rejected_longer"] == 2 and counts["dropped_for_length"] == 0
    pairs, counts = round_pairs(Data(), SelfRewardConfig(length_balance=0.5))
    assert [p["prompt_id"] for p in pairs] == [2, 3]
    assert (counts["pairs"], counts["rejected_longer"], counts["dropped_for_length"]) == (2, 1, 1)
    assert (counts["chosen_words_mean"], counts["rejected_words_mean"]) == (3.0, 2.0)


def test_self_reward_leaves_rejected_ends_unscored_unless_told():
    assert SelfRewardConfig().train_config(1, 3).score_rejected_end is False
    assert SelfRewardConfig(score_rejected_end=True).train_config(1, 3).score_rejected_end is True
    assert SelfRewardConfig(train={"score_rejected_end": True}).train_config(1, 3).score_rejected_end is True
    assert SelfRewardConfig().bootstrap_config().loss == "sft"  # M1's SFT has no rejected side
    with pytest.raises(ValueError, match="score_rejected_end"):
        SelfRewardConfig(score_rejected_end="no")
    assert SelfRewardConfig(score_rejected_end=0.5).train_config(1, 3).score_rejected_end == 0.5
    with pytest.raises(ValueError, match="score_rejected_end"):
        SelfRewardConfig(score_rejected_end=2)


def test_self_reward_sft_weight_reaches_the_trainer_and_is_checked():
    assert SelfRewardConfig().train_config(1, 3).sft_weight == 0.0  # the paper: pure DPO
    assert SelfRewardConfig(sft_weight=1.0).train_config(1, 3).sft_weight == 1.0
    with pytest.raises(ValueError, match="sft_weight"):
        SelfRewardConfig(sft_weight=-1)
    with pytest.raises(ValueError, match="length_control"):
        SelfRewardConfig(length_control="yes")
    with pytest.raises(ValueError, match="chosen_must_end"):
        SelfRewardConfig(chosen_must_end=1)
    for bad in (0.4, 1.5):
        with pytest.raises(ValueError, match="length_balance"):
            SelfRewardConfig(length_balance=bad)


def test_self_instruction_prompt_parse_and_dedupe():
    msgs = instruct_messages(["a", "b", "c", "d"], random.Random(0), k=3)
    assert msgs[0]["role"] == "user" and "Task 4:" in msgs[0]["content"]
    assert parse_new_prompt("Task 5: Write a haiku about snow.\nTask 6: more") == "Write a haiku about snow."
    assert parse_new_prompt("  ") is None and parse_new_prompt("Task 5: hi") is None



@pytest.mark.parametrize("text,task", [
    ("Task 5\nWrite a short note about wind turbines.", "Write a short note about wind turbines."),  # no colon
    (">>Task 5: Write a few lines about the periodic table.<<", "Write a few lines about the periodic table."),
    ("* Task 5: Write a few lines about owls\n* Task 6: 'What about first aid?'", "Write a few lines about owls"),
    ("* Task 5: Tell me about the Great Wall.\n* Answer: It is long.", "Tell me about the Great Wall."),
    ('Task 5: "Why do owls hunt at night?"', "Why do owls hunt at night?"),  # a question needs no opener
    ("Task 5\nOwls are birds that mostly hunt at night.", None),  # a statement, not a request
    ("Task 5\n<<Lighthouses>>", None),
    ("Checks: 1. forbidden words: none of them appears, so it is followed.\nThe task is broken.", None),  # judge format
    ("Task 5\nMy answer is yes.\nMy answer is maybe.", None),
    ("Task 5\n* Let the butterfly flutter in your arms.\n* A butterfly can turn its head.", None),
    ("Task 5: Write a few lines about the moon.\n* 'The moon orbits the Earth.', so it is broken.",
     "Write a few lines about the moon."),  # the first line only
    ("Task 5: Here are some tasks people ask an assistant to do:", None),  # the request's own line
    ("Task 5: Here is a claim about tea: tea grows on bushes.", None),  # presents, asks nothing
    ("Task 5: Here is a claim about tea: tea grows on bushes. Is this claim true?",
     "Here is a claim about tea: tea grows on bushes. Is this claim true?"),
    ("Task 5: Here is a claim about tea: tea grows on bushes. Is it true? No, it is broken.", None),  # answered
    ("Task 5: Write a note about owls. Task 6: Write a note about bats.", "Write a note about owls."),
    ("Task 5: Is there anything else I can help with?", None),  # the assistant's offer, not a request
    ("Task 5: What else can I help you with today?", None),
    ("Task 5: How can I help my dog sleep at night?", "How can I help my dog sleep at night?"),
])
def test_self_instructed_prompts_must_read_as_requests(text, task):
    openers = task_openers(["Write a poem about the sea.", "Tell me a joke.", "  explain why the sky is blue",
                             "Here is a claim about the sea: it is salty. Is this claim true?"])
    assert openers == {"write", "tell", "explain"}
    assert parse_new_prompt(text, openers) == task
    # without openers (new_prompts_like_seeds off) only the header and the length decide
    assert parse_new_prompt("Task 5\nOwls are birds that mostly hunt at night.") == "Owls are birds that mostly hunt at night."
    kept = dedupe(["write a poem about the sea", "Write a poem about the sea!", "list three rivers in europe"],
                  ["write a poem about the moon"], threshold=0.7)
    assert kept == ["list three rivers in europe"]


class Scripted:
    """Answers each batch of self-instruction requests with the next scripted list of answers, and
    records the batches' sizes and sampling seeds."""

    def __init__(self, batches: list[list[str]]):
        self.batches, self.asked = list(batches), []

    def __call__(self, requests, params):
        self.asked.append((len(requests), params.seed))
        answers = self.batches.pop(0)
        return (answers + ["Task 5: the cat"] * len(requests))[:len(requests)]  # the rest: no task


SEEDS = ["Write a poem about the sea.", "Tell me a joke about cats."]


@pytest.mark.parametrize("batches,limit,kept,counts", [
    # the first batch has enough: no second one is asked
    ([["Task 5: Write a note about owls.", "Task 5: Tell me about bats.", "Task 5: Write about rain."]], 4,
     ["Write a note about owls.", "Tell me about bats."], {"requested": 4, "batches": 1, "kept": 2, "unparsed": 1}),
    # statements and duplicates (of a seed, of a prompt kept in the same batch or an earlier one) are
    # not kept, so the stage asks again, with new seeds, until it has two
    ([["Task 5: Owls hunt at night.", "Task 5: Write a poem about the sea!", "Task 5: Write a note about owls."],
      ["Task 5: write a note about owls", "Task 5: Tell me about bats.", "Task 5: Tell me about bats?"]], 4,
     ["Write a note about owls.", "Tell me about bats."], {"requested": 8, "batches": 2, "kept": 2, "unparsed": 3}),
    # instruct_batches caps the asking: one batch keeps what it found
    ([["Task 5: Owls hunt at night.", "Task 5: Write a note about owls."], ["Task 5: Tell me about bats."]], 1,
     ["Write a note about owls."], {"requested": 4, "batches": 1, "kept": 1, "unparsed": 3}),
    # nothing usable: every allowed batch is asked, and the round keeps none
    ([[], [], []], 3, [], {"requested": 12, "batches": 3, "kept": 0, "unparsed": 12}),
])
def test_self_instruction_asks_again_until_it_has_enough(batches, limit, kept, counts):
    generate = Scripted(batches)
    cfg = SelfRewardConfig(instruct_batches=limit, seed=7)
    new, stats = collect_new_prompts(generate, cfg, SEEDS, ["Tell me a story about a fox."], 3, want=2)
    assert new == kept and stats == counts
    assert [n for n, _ in generate.asked] == [4] * counts["batches"]  # twice `want` a batch
    seeds = [seed for _, seed in generate.asked]
    assert len(set(seeds)) == len(seeds)  # each batch samples anew
    # batch 0 is the request the stage always made first (bench/self_instruct.py replays it)
    assert round_requests(cfg, SEEDS, 3, 2)[1].seed == seeds[0]


class M1Data:
    """The RoundData reads Self-Rewarding's M1 job makes: a run set of two prompts with references
    and an EFT set of one judgment."""
    round_number, total_rounds, base_version_id, prompt_set_ids = 1, 1, 1, [1]
    SETS = {1: [{"id": 1, "messages": [{"role": "user", "content": "Tell me about owls."}], "reference": "Owls hunt.",
                 "constraints": None},
                {"id": 2, "messages": [{"role": "user", "content": "Tell me about bats."}], "reference": "Bats fly.",
                 "constraints": None}],
            2: [{"id": 3, "messages": [{"role": "user", "content": "Review this answer."}], "reference": "Score: 4",
                 "constraints": None}]}

    def prompts_of_sets(self, ids):
        return [p for i in ids for p in self.SETS[i]]

    def run_prompts(self):
        return self.prompts_of_sets(self.prompt_set_ids)

    def prompts(self, ids):
        return {}

    def samples(self, role):
        return []


@pytest.mark.parametrize("ift,responses", [(True, ["Owls hunt.", "Bats fly.", "Score: 4"]), (False, ["Score: 4"])])
def test_m1_learns_the_runs_references_only_with_bootstrap_ift(ift, responses):
    from services.methods.self_reward import training_job

    job = training_job(M1Data(), SelfRewardConfig(eft_prompt_set_ids=[2], bootstrap_ift=ift), "bootstrap")
    assert [i["response"] for i in job.items] == responses
    assert job.stats["ift_examples"] == (2 if ift else 0) and job.stats["sft_examples"] == len(responses)
    assert parse_config(SelfRewardConfig, {"bootstrap_ift": "no"})[1][0]["loc"] == ["config", "bootstrap_ift"]


@pytest.mark.parametrize("source", ["references", "own_answers"])
def test_with_the_judge_apart_the_bootstrap_trains_a_judge_version_and_the_policy_stays(source):
    from services.methods.self_reward import _judge_model, _judge_shards, training_job
    from services.training.job import metrics_label

    cfg = SelfRewardConfig(eft_prompt_set_ids=[2], judge_apart=True, ift_source=source)
    job = training_job(M1Data(), cfg, "bootstrap")
    # the judge's data alone (the EFT example here), on a fresh adapter: no instruction data
    assert [i["response"] for i in job.items] == ["Score: 4"] and job.stats["ift_examples"] == 0
    assert (job.role, job.key_round, job.sets_policy, metrics_label(job)) == ("judge", 0, False, "bootstrap")
    assert job.init_adapter is None and job.parent_id == M1Data.base_version_id
    assert not cfg.ift_from_own_answers  # no θ0 samples drawn for instruction data nobody trains on
    assert _judge_model(cfg) == "role:judge" and _judge_model(SelfRewardConfig()) == "policy"
    assert _judge_model(SelfRewardConfig(judge_version_id=4)) == "version:4"

    class Inp:
        config, shard_size = cfg, 8

        class data:
            metrics = {}

            @staticmethod
            def round_prompts():
                return [{"id": 5}]

    assert {s["model"] for s in _judge_shards(Inp())} == {"role:judge"}


@pytest.mark.parametrize("data", [{"judge_apart": True, "bootstrap_sft": False},
                                  {"judge_apart": True, "judge_version_id": 3}, {"judge_apart": "yes"}])
def test_judge_apart_conflicts_name_the_field(data):
    assert parse_config(SelfRewardConfig, data)[1][0]["loc"] == ["config", "judge_apart"]


class OwnData(M1Data):
    """M1Data with constrained run prompts, a judge set, and θ0's round-1 bootstrap answers."""

    def __init__(self):
        def q(i, text, constraints):
            return {"id": i, "messages": [{"role": "user", "content": text}], "reference": f"reference {i}",
                    "constraints": constraints}

        self.SETS = {1: [q(1, "write about the lake in lowercase", LOWER), q(2, "write about the hill in lowercase", LOWER),
                         q(3, "Tell me about bats.", None)],
                     2: M1Data.SETS[2], 7: [q(9, "write about the sea in lowercase", LOWER)]}
        self._samples = [(1, "the lake is calm.", "stop"),  # passes, ended, sound: kept
                         (1, "The Lake Is Calm.", "stop"),  # fails the verifier
                         (2, "the hill went on and", "length"),  # passes, but cut at the limit
                         (2, "the hill is green.\nuser\nwrite more.", "stop"),  # passes, but leaks a turn
                         (2, "The Hill Is Green.", "stop"),  # fails: prompt 2's repair, none of its answers passed
                         (1, "the lake is calm.", "stop"),  # a repeat of a kept answer
                         (9, "the sea is calm.", "stop")]  # a judge set's prompt: never the actor's data

    def prompts(self, ids):
        every = {p["id"]: p for ps in self.SETS.values() for p in ps}
        return {i: every[i] for i in ids}

    def samples(self, role):
        return [{"id": k, "prompt_id": pid, "index": k, "text": t, "finish_reason": f}
                for k, (pid, t, f) in enumerate(self._samples)] if role == "bootstrap" else []


def test_m1_can_learn_from_the_starts_own_passing_answers():
    from services.methods.self_reward import _bootstrap_samples_plan, training_job

    cfg = SelfRewardConfig(eft_prompt_set_ids=[2], ift_source="own_answers", judge_prompt_set_ids=[7],
                           judge_check_prompts=0)
    job = training_job(OwnData(), cfg, "bootstrap")
    own = [i for i in job.items if i["messages"][-1]["content"].startswith("write about the")]
    assert [(i["messages"][-1]["content"], i["response"]) for i in own] == [
        ("write about the lake in lowercase", "the lake is calm."), ("write about the hill in lowercase", "the hill is green.")]
    assert "reference 1" not in [i["response"] for i in job.items] and job.stats["ift_examples"] == 2
    plain = training_job(OwnData(), replace(cfg, ift_repairs=False), "bootstrap")
    assert plain.stats["ift_examples"] == 1 and "the hill is green." not in [i["response"] for i in plain.items]
    assert "Score: 4" in [i["response"] for i in job.items]  # the EFT data stays
    # the judge's data is drawn from the same samples only when the judge is bootstrapped
    assert job.stats["rubric_examples"] > 0
    quiet = training_job(OwnData(), SelfRewardConfig(eft_prompt_set_ids=[2], ift_source="own_answers",
                                                     bootstrap_judge=False, judge_check_prompts=0), "bootstrap")
    assert quiet.stats["rubric_examples"] == 0 and len(quiet.items) == 3
    # round 1 samples θ0 for them even when the verifier alone judges
    from services.methods.base import PlanInput

    def plan(config):
        return _bootstrap_samples_plan(PlanInput(prompt_ids=[1, 2, 3], eval_prompt_ids=[], round_number=1,
                                                 total_rounds=1, shard_size=8, config=config, data=OwnData()))

    assert plan(SelfRewardConfig(judge="verifier", ift_source="own_answers", judge_check_prompts=0)) == [
        {"prompt_ids": [1, 2], "role": "bootstrap", "n": 2}]
    assert plan(SelfRewardConfig(judge="verifier", judge_check_prompts=0)) == []
    assert parse_config(SelfRewardConfig, {"ift_source": "gold"})[1][0]["loc"] == ["config", "ift_source"]
    assert parse_config(SelfRewardConfig, {"ift_repairs": 1})[1][0]["loc"] == ["config", "ift_repairs"]


def test_instruct_batches_is_validated():
    for bad in (0, 33, 1.5):
        with pytest.raises(ValueError, match="instruct_batches"):
            SelfRewardConfig(instruct_batches=bad)


def test_refined_pairs_pair_each_solution_with_its_own_root():
    trees = [{"prompt_id": 1, "sample_index": 2, "root": "bad, text", "solution": "bad text"},
             {"prompt_id": 2, "sample_index": 0, "root": "r", "solution": None},
             {"prompt_id": 3, "sample_index": 1, "root": "same", "solution": " same "}]
    assert refined_pairs(trees) == [{"prompt_id": 1, "index": 2, "source": "refined_vs_original",
                                     "chosen": "bad text", "rejected": "bad, text"}]


@pytest.mark.parametrize("method,data,field", [
    ("rest_em", {"samples_per_prompt": 0}, "samples_per_prompt"),
    ("rest_em", {"max_correct_per_prompt": 0}, "max_correct_per_prompt"),
    ("rest_em", {"temperature": 0}, "temperature"),
    ("self_reward", {"samples_per_prompt": 1}, "samples_per_prompt"),
    ("self_reward", {"judge_samples": 0}, "judge_samples"),
    ("self_reward", {"eft_prompt_set_ids": 3}, "eft_prompt_set_ids"),
    ("self_reward", {"length_balance": 0.2}, "length_balance"),
    ("spar", {"search": "astar"}, "search"),
    ("spar", {"judge_votes": 0}, "judge_votes"),
    ("spar", {"sft_weight": -1}, "sft_weight"),
    ("spar", {"train": {"loss": "nope"}}, "train"),
])
def test_config_errors_name_the_field(method, data, field):
    cfg, errors = parse_config(get_recipe(method).config_cls, data)
    assert cfg is None and errors[0]["loc"] == ["config", field], errors


def test_paper_defaults_and_trainer_settings():
    rest = RestEMConfig()
    assert (rest.samples_per_prompt, rest.max_correct_per_prompt, rest.temperature, rest.top_k) == (32, 10, 0.7, 40)
    assert rest.train_config(2, 3).loss == "sft"
    sr = SelfRewardConfig()
    assert (sr.few_shot, sr.samples_per_prompt, sr.judge_samples, sr.beta) == (8, 4, 3, 0.1)
    assert sr.bootstrap_config().loss == "sft"
    spar = SPaRConfig()
    assert (spar.samples_per_prompt, spar.judge_votes, spar.branching, spar.keep, spar.max_depth) == (5, 5, 3, 2, 3)
    tc = spar.train_config(1, 2)
    assert (tc.loss, tc.beta, tc.sft_weight) == ("sigmoid", 0.1, 0.1)
    assert spar.search_config().strategy == "bfs"


def test_stage_lists():
    names = lambda m, cfg: [s.name for s in get_recipe(m).stages(cfg, False)]  # noqa: E731
    assert names("rest_em", RestEMConfig()) == ["generate", "verify", "train"]
    assert names("self_reward", SelfRewardConfig()) == ["bootstrap_samples", "bootstrap", "judge_check", "self_instruct",
                                                        "generate", "judge", "pairs", "train"]
    assert names("spar", SPaRConfig()) == ["generate", "bootstrap_samples", "bootstrap_judge", "judge_check", "judge",
                                           "refine", "pairs", "train", "train_refiner"]


@pytest.mark.parametrize("stored,read", [
    ({"mix_previous_pairs": 0}, {"mix_previous_pairs": False}),
    ({"mix_previous_pairs": "no"}, {"mix_previous_pairs": True}),  # a non-empty string was truthy then
    ({"mix_previous_pairs": True, "train": {"lora": 1, "share_prompt": 0}},
     {"mix_previous_pairs": True, "train": {"lora": True, "share_prompt": False}}),
])
def test_a_stored_config_reads_loose_switches_by_their_truth(stored, read):
    from services.methods.base import parse_config, parse_stored_config
    from services.methods.spin import SPINConfig

    cfg, errors = parse_stored_config(SPINConfig, stored)
    assert errors == [] and {k: getattr(cfg, k) for k in read} == read
    assert parse_config(SPINConfig, stored)[1]  # a submission with the same values is refused
    assert get_recipe_config("spin", stored) == cfg  # the workers read it the same way


@pytest.mark.parametrize("stored,field", [
    ({"train": {"lora": 0}}, "train"),  # full fine-tuning then; runs no longer do it
    ({"learning_rate": "fast"}, "learning_rate"),  # only switches are relaxed
    ({"epochs": 2.0}, "epochs"),
])
def test_a_stored_config_that_is_still_invalid_names_its_field(stored, field):
    from services.methods.base import parse_stored_config
    from services.methods.spin import SPINConfig

    cfg, errors = parse_stored_config(SPINConfig, stored)
    assert cfg is None and errors[0]["loc"] == ["config", field]


def get_recipe_config(method, stored):
    from services.methods import get_recipe

    return get_recipe(method).load_config(stored)


@pytest.mark.parametrize("method", ["rest_em", "spin", "self_reward", "spar"])
def test_the_demo_settings_are_valid_configs_of_their_method(method):
    from services.cli import DEMO_CONFIGS

    cfg, errors = parse_config(get_recipe(method).config_cls, DEMO_CONFIGS[method])
    assert errors == [] and cfg is not None
    if method == "rest_em":  # the demo runs the setting that met the target (docs/results.md)
        assert cfg.repair_failed is True


def test_spar_later_learning_rate_applies_from_its_round_and_defaults_to_the_paper():
    assert [SPaRConfig().train_config(r, 3).learning_rate for r in (1, 2, 3)] == [1e-5] * 3
    cfg = SPaRConfig(learning_rate=2e-5, later_learning_rate=5e-6, later_from_round=3)
    assert [cfg.train_config(r, 3).learning_rate for r in (1, 2, 3)] == [2e-5, 2e-5, 5e-6]
    assert cfg.train_config(5, 0).learning_rate == 5e-6  # a continuous run: no known last round
    assert cfg.refiner_config().learning_rate == cfg.refiner_learning_rate  # the actor's schedule only


@pytest.mark.parametrize("data, field", [({"later_learning_rate": 0}, "later_learning_rate"),
                                         ({"later_learning_rate": "slow"}, "later_learning_rate"),
                                         ({"later_from_round": 1}, "later_from_round")])
def test_spar_later_learning_rate_errors_name_the_field(data, field):
    assert parse_config(SPaRConfig, data)[1][0]["loc"] == ["config", field]
