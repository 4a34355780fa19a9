"""SPIN recipe: pair building and config validation (pure)."""
from __future__ import annotations

import pytest

from services.methods import get_recipe, parse_config
from services.methods.base import PlanInput, eval_shards, shard_prompts
from services.methods.spin import SPINConfig, build_pairs


def test_pairs_put_gold_as_chosen_and_skip_useless_samples():
    prompts = [{"id": 1, "reference": "gold one"}, {"id": 2, "reference": None}, {"id": 3, "reference": "g3"}]
    samples = [{"prompt_id": 1, "index": 0, "text": "gen a"}, {"prompt_id": 1, "index": 1, "text": " gold one "},
               {"prompt_id": 2, "index": 0, "text": "x"}, {"prompt_id": 3, "index": 0, "text": "y"}]
    pairs, skipped = build_pairs(prompts, samples)
    assert skipped == 2
    assert pairs == [
        {"prompt_id": 1, "index": 0, "source": "gold_vs_generated", "chosen": "gold one", "rejected": "gen a"},
        {"prompt_id": 3, "index": 0, "source": "gold_vs_generated", "chosen": "g3", "rejected": "y"},
    ]


def test_pair_stats_say_how_long_each_side_is_and_how_many_samples_were_cut():
    from services.methods.spin import round_pairs

    class Data:
        def samples(self, role):
            return [{"prompt_id": 1, "index": 0, "text": "one two three four five", "finish_reason": "length"},
                    {"prompt_id": 2, "index": 0, "text": "short", "finish_reason": "stop"},
                    {"prompt_id": 3, "index": 0, "text": "a b c", "finish_reason": "stop"}]

        def prompts(self, ids):
            gold = {1: "gold answer", 2: "a longer gold answer", 3: "a b c"}
            return {i: {"id": i, "reference": gold[i]} for i in ids}

    pairs, stats = round_pairs(Data(), SPINConfig())
    assert len(pairs) == 2  # prompt 3's sample is its gold answer
    assert stats == {"samples": 3, "pairs": 2, "pairs_skipped": 1, "rejected_longer": 1, "chosen_words_mean": 3.0,
                     "rejected_words_mean": 3.0, "rejected_cut": 1, "dropped_for_length": 0}


def test_length_balance_keeps_as_many_pairs_of_each_side():
    from services.methods.spin import round_pairs

    # gold answers of two words; three samples longer than their gold, one shorter, one as long
    texts = {1: "a b c d e f g", 2: "a b c", 3: "a b c d", 4: "a", 5: "x y"}

    class Data:
        def samples(self, role):
            return [{"prompt_id": i, "index": 0, "text": t, "finish_reason": "stop"} for i, t in texts.items()]

        def prompts(self, ids):
            return {i: {"id": i, "reference": "gold answer"} for i in ids}

    every, stats = round_pairs(Data(), SPINConfig())
    assert (len(every), stats["rejected_longer"], stats["dropped_for_length"]) == (5, 3, 0)
    kept, stats = round_pairs(Data(), SPINConfig(length_balance=0.5))
    # one pair rejects the shorter answer, so one that rejects the longer stays: the narrowest gap
    assert [p["rejected"] for p in kept] == ["a b c", "a", "x y"]
    assert (stats["pairs"], stats["rejected_longer"], stats["dropped_for_length"]) == (3, 1, 2)
    assert parse_config(SPINConfig, {"length_balance": 0.4})[1][0]["loc"] == ["config", "length_balance"]


@pytest.mark.parametrize("data,loc", [
    ({"unknown": 1}, ["config", "unknown"]),
    ({"beta": 0}, ["config", "beta"]),
    ({"temperature": 0}, ["config", "temperature"]),
    ({"top_p": 1.5}, ["config", "top_p"]),
    ({"epochs": 0}, ["config", "epochs"]),
    ({"samples_per_prompt": 0}, ["config", "samples_per_prompt"]),
    ({"train": {"nope": 1}}, ["config", "train"]),
    ({"lora_r": "big"}, ["config"]),
])
def test_config_errors_name_the_field(data, loc):
    cfg, errors = parse_config(SPINConfig, data)
    assert cfg is None
    assert errors and errors[0]["loc"][:len(loc)] == loc, errors


def test_paper_schedule_of_beta_and_learning_rate():
    cfg = SPINConfig()
    r1, r3 = cfg.train_config(1, 3), cfg.train_config(3, 3)
    assert (r1.beta, r1.learning_rate, r1.loss) == (0.1, 5e-6, "sigmoid")  # LoRA: 10x the paper's 5e-7
    assert (r3.beta, r3.learning_rate) == (5.0, 1e-6)  # last round: λ=5.0; later rounds: 10x the paper's 1e-7
    assert SPINConfig(last_round_beta=None).train_config(3, 3).beta == 0.1
    assert SPINConfig(train={"schedule": "cosine"}).train_config(1, 1).schedule == "cosine"


def test_stages_and_sharding():
    recipe = get_recipe("spin")
    names = [s.name for s in recipe.stages(SPINConfig(), False)]
    assert names == ["generate", "pairs", "train"]
    assert [s.name for s in recipe.stages(SPINConfig(), True)][-2:] == ["eval_generate", "evaluate"]
    inp = PlanInput(prompt_ids=list(range(10)), eval_prompt_ids=[], round_number=1, total_rounds=1,
                    shard_size=4, config=SPINConfig())
    shards = shard_prompts(role="policy")(inp)
    assert [s["prompt_ids"] for s in shards] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(s["role"] == "policy" for s in shards)
    evals = eval_shards(PlanInput(prompt_ids=[], eval_prompt_ids=[1, 2, 3], round_number=1, total_rounds=2,
                                  shard_size=2, config=None))
    assert [(s["role"], s["model"], s["prompt_ids"]) for s in evals] == [
        ("eval", "produced", [1, 2]), ("eval", "produced", [3]), ("eval_base", "base", [1, 2]),
        ("eval_base", "base", [3])]
    assert all(s["greedy"] and s["n"] == 1 and "max_new_tokens" not in s for s in evals)
    own = eval_shards(PlanInput(prompt_ids=[], eval_prompt_ids=[1, 2, 3], round_number=2, total_rounds=2,
                                shard_size=2, config=SPINConfig(eval_max_new_tokens=64)))
    assert [(s["role"], s["max_new_tokens"]) for s in own] == [("eval", 64), ("eval", 64)]
    assert "max_new_tokens" not in eval_shards(PlanInput(prompt_ids=[], eval_prompt_ids=[1], round_number=1,
                                                         total_rounds=1, shard_size=2, config=SPINConfig()))[0]
    # a round-1 policy the round made itself (Self-Rewarding's M1) is evaluated too; the base is not "made"
    class Data:
        def __init__(self, adapter):
            self.policy = {"version_id": 7, "adapter": adapter}

    def roles(round_number, adapter):
        return {s["role"]: s["model"] for s in eval_shards(PlanInput(
            prompt_ids=[], eval_prompt_ids=[1], round_number=round_number, total_rounds=2, shard_size=2,
            config=None, data=Data(adapter)))}

    assert roles(1, "/artifacts/round0-policy") == {"eval": "produced", "eval_base": "base", "eval_policy": "policy"}
    assert roles(1, None) == {"eval": "produced", "eval_base": "base"}
    assert roles(2, "/artifacts/round1-policy") == {"eval": "produced"}
    with pytest.raises(ValueError, match="unknown method"):
        get_recipe("alchemy")

