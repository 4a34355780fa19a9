"""Judge choice, judge check and the faithful details of the recipes, on plain data."""
from __future__ import annotations

import pytest

from services.judging.tasks import judge_check_verdict
from services.methods.base import parse_config
from services.methods.self_reward import SelfRewardConfig
from services.methods.spar import SPaRConfig
from services.methods.spin import SPINConfig
from services.training.config import TrainConfig
from services.training.trainer import _schedule

FLOOR = {"parseable": 0.9, "accuracy": 0.7}


def report(parseable, balanced, pairwise):
    return {"parseable": {"refiner": parseable, "rubric": parseable},
            "refiner": {"balanced_accuracy": balanced}, "rubric": {"accuracy": pairwise}}


@pytest.mark.parametrize("rep,kind,ok,words", [
    (report(0.95, 0.8, 0.5), "refiner", True, []),
    (report(0.95, 0.8, 0.5), "rubric", False, ["pairwise accuracy 0.50 < 0.70"]),
    (report(0.5, 0.9, 0.9), "refiner", False, ["parseable 0.50 < 0.90"]),
    (report(None, None, None), "refiner", False, ["parseable 0.00 < 0.90", "balanced verdict accuracy none < 0.70"]),
])
def test_judge_check_verdict(rep, kind, ok, words):
    assert judge_check_verdict(rep, kind, FLOOR) == (ok, words)


def test_judge_check_verdict_shows_the_interval_of_a_failed_accuracy():
    rep = report(0.95, 0.62, 0.5)
    rep["refiner"]["balanced_ci95"] = [0.48, 0.77]
    assert judge_check_verdict(rep, "refiner", FLOOR) == (False, ["balanced verdict accuracy 0.62 [0.48, 0.77] < 0.70"])


LOWER = {**FLOOR, "decides_on": "lower_bound"}


@pytest.mark.parametrize("kind,accuracy,ci,ok,words", [
    # the estimate clears the floor, the interval's lower end does not: trusted on the estimate only
    ("rubric", 0.71, [0.47, 0.91], False, ["pairwise accuracy 0.71 [0.47, 0.91]: the interval's lower end 0.47 < 0.70"]),
    ("refiner", 0.88, [0.74, 0.97], True, []),
    ("refiner", 0.88, None, False, ["balanced verdict accuracy 0.88: the interval's lower end none < 0.70"]),
    ("rubric", None, None, False, ["pairwise accuracy none: the interval's lower end none < 0.70"]),
])
def test_judge_check_can_decide_on_the_intervals_lower_end(kind, accuracy, ci, ok, words):
    rep = report(0.95, accuracy, accuracy)
    rep["refiner"]["balanced_ci95"] = rep["rubric"]["ci95"] = ci
    assert judge_check_verdict(rep, kind, LOWER) == (ok, words)
    if accuracy is not None and ci:  # the point estimate clears 0.7 in both
        assert judge_check_verdict(rep, kind, FLOOR) == (True, [])


def test_the_judge_check_plan_carries_what_it_decides_on():
    from services.methods.base import judge_check_plan

    class Inp:
        config, data = SelfRewardConfig(judge_check_decides_on="lower_bound"), Data(60)

    (stage,) = judge_check_plan("rubric", "policy", "judge_samples")(Inp())
    assert stage["floor"] == {"parseable": 0.9, "accuracy": 0.7, "decides_on": "lower_bound"}
    # whoever judges, the probe's answers are the policy's
    (stage,) = judge_check_plan("rubric", "role:judge", "judge_samples")(Inp())
    assert (stage["model"], stage["answer_model"]) == ("role:judge", "policy")


@pytest.mark.parametrize("cls", [SPaRConfig, SelfRewardConfig])
@pytest.mark.parametrize("data,field", [({"judge": "oracle"}, "judge"), ({"on_weak_judge": "ignore"}, "on_weak_judge"),
                                        ({"judge_floor_accuracy": 2}, "judge_floor_accuracy"),
                                        ({"judge_check_prompts": -1}, "judge_check_prompts"),
                                        ({"judge_check_decides_on": "median"}, "judge_check_decides_on")])
def test_judge_fields_are_validated(cls, data, field):
    cfg, errors = parse_config(cls, data)
    assert cfg is None and errors[0]["loc"] == ["config", field]


NO_COMMA = [{"id": "punctuation:no_comma"}]


class Data:
    def __init__(self, n_constrained, n_plain=3, metrics=None, judge_sets=None):
        self.metrics = metrics or {}
        self._prompts = [{"id": i, "constraints": NO_COMMA} for i in range(n_constrained)]
        self._prompts += [{"id": 100 + i, "constraints": None} for i in range(n_plain)]
        self._sets = judge_sets or {}  # set id -> prompts

    def run_prompts(self):
        return self._prompts

    def prompts_of_sets(self, ids):
        return [p for i in ids for p in self._sets.get(i, [])]


def test_probe_prompts_are_kept_out_of_the_judge_bootstrap():
    cfg = SPaRConfig(judge_check_prompts=4)
    boot, probe = cfg.constrained_split(Data(10))
    assert probe == [6, 7, 8, 9] and boot == [0, 1, 2, 3, 4, 5]
    assert cfg.constrained_split(Data(4)) == ([0, 1], [2, 3])  # at most half goes to the probe
    assert SPaRConfig(judge_check_prompts=0).constrained_split(Data(4)) == ([0, 1, 2, 3], [])


def test_judge_prompt_sets_feed_the_bootstrap_and_the_probe():
    judge_set = [{"id": 200 + i, "constraints": NO_COMMA} for i in range(6)] + [{"id": 300, "constraints": None}]
    data = Data(2, judge_sets={7: judge_set + [{"id": 1, "constraints": NO_COMMA}]})
    boot, probe = SPaRConfig(judge_check_prompts=3, judge_prompt_set_ids=[7]).constrained_split(data)
    # the run's own constrained prompts first, then the set's (a prompt in both counts once, the
    # unconstrained one not at all); the probe comes from the end
    assert boot == [0, 1, 200, 201, 202] and probe == [203, 204, 205]
    # a run whose own prompts have no constraints is taught by the judge set alone
    assert SPaRConfig(judge_check_prompts=2, judge_prompt_set_ids=[7]).constrained_split(
        Data(0, judge_sets={7: judge_set})) == ([200, 201, 202, 203], [204, 205])


def test_spar_samples_the_judge_set_prompts_in_round_one_only():
    from services.methods.base import PlanInput
    from services.methods.spar import _bootstrap_samples_plan

    judge_set = [{"id": 200 + i, "constraints": NO_COMMA} for i in range(5)]
    cfg = SPaRConfig(judge_check_prompts=2, judge_prompt_set_ids=[7], samples_per_prompt=2)
    data = Data(2, judge_sets={7: judge_set})

    def plan(round_number, config=cfg):
        return _bootstrap_samples_plan(PlanInput(prompt_ids=[0, 1, 100, 101, 102], eval_prompt_ids=[],
                                                 round_number=round_number, total_rounds=2, shard_size=2,
                                                 config=config, data=data))

    # the run's own prompts are sampled by the round's generate stage; the probe is never sampled
    assert plan(1) == [{"prompt_ids": [200, 201], "role": "bootstrap", "n": 2}, {"prompt_ids": [202], "role": "bootstrap", "n": 2}]
    assert plan(2) == [] and plan(1, SPaRConfig(judge="verifier", judge_prompt_set_ids=[7])) == []
    assert plan(1, SPaRConfig(judge_check_prompts=2)) == []  # no judge sets: nothing extra to sample


@pytest.mark.parametrize("cls", [SPaRConfig, SelfRewardConfig])
def test_judge_prompt_set_ids_must_be_ids(cls):
    cfg, errors = parse_config(cls, {"judge_prompt_set_ids": ["a"]})
    assert cfg is None and errors[0]["loc"] == ["config", "judge_prompt_set_ids"]


def test_judge_mode_follows_the_choice_and_the_check():
    assert SPaRConfig().judge_mode(Data(2)) == "llm"
    assert SPaRConfig(judge="hybrid").judge_mode(Data(2)) == "hybrid"
    assert SPaRConfig(judge="verifier").judge_mode(Data(2)) == "verifier"
    assert SPaRConfig().judge_mode(Data(2, metrics={"judge_check": {"action": "verifier"}})) == "verifier"
    assert SPaRConfig().judge_mode(Data(2, metrics={"judge_check": {"action": "trust"}})) == "llm"


def test_self_rewarding_learning_rate_decays_to_its_floor_not_to_zero():
    tc = SelfRewardConfig().train_config(1, 3)
    assert tc.final_lr_ratio == 0.1
    f = _schedule(TrainConfig(warmup_ratio=0.0, final_lr_ratio=0.1), 10)
    assert f(0) == pytest.approx(1.0) and f(10) == pytest.approx(0.1) and f(5) == pytest.approx(0.55)
    assert _schedule(TrainConfig(warmup_ratio=0.0), 10)(10) == 0.0  # the default still ends at 0
    cos = _schedule(TrainConfig(warmup_ratio=0.0, schedule="cosine", final_lr_ratio=0.1), 10)
    assert cos(10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="final_lr_ratio"):
        TrainConfig(final_lr_ratio=1.5)


def test_warm_up_never_spends_a_step_at_learning_rate_zero():
    two = _schedule(TrainConfig(warmup_ratio=0.1), 2)  # warm-up of one step on a two-step round
    assert two(0) == pytest.approx(0.5) and two(1) == pytest.approx(1.0)
    long = _schedule(TrainConfig(warmup_ratio=0.1), 100)  # ten warm-up steps, rising to the full rate
    rates = [long(s) for s in range(11)]
    assert rates[0] > 0 and rates == sorted(rates) and rates[9] < 1.0 and rates[10] == pytest.approx(1.0)


def test_spin_last_round_beta_applies_whenever_the_last_round_is_known():
    assert SPINConfig().train_config(1, 1).beta == 5.0  # a one-round run is its own last round
    assert SPINConfig().train_config(1, 2).beta == 0.1
    assert SPINConfig().train_config(5, 0).beta == 0.1  # continuous: no known last round


def test_self_reward_skips_self_instruction_when_the_verifier_alone_judges():
    """Self-instructed prompts carry no constraints: when the verifier judges the whole round (by
    choice, or after a weak judge check) they could not be scored, so none are written or sampled."""
    from services.methods.base import PlanInput
    from services.methods.self_reward import _candidate_ids, _self_instruct_plan

    class RoundData(Data):
        def round_prompts(self):
            return [{"id": 500, "constraints": None}]

    def inp(cfg, metrics=None):
        return PlanInput(prompt_ids=[0, 1, 100], eval_prompt_ids=[], round_number=1, total_rounds=1, shard_size=8,
                         config=cfg, data=RoundData(2, n_plain=1, metrics=metrics))

    weak = {"judge_check": {"action": "verifier"}}
    assert _self_instruct_plan(inp(SelfRewardConfig(new_prompts_per_round=5))) == [{"count": 5}]
    assert _candidate_ids(inp(SelfRewardConfig())) == [500]  # the paper: only the new prompts
    assert _candidate_ids(inp(SelfRewardConfig(judge="hybrid"))) == [500, 0, 1]
    for cfg, metrics in ((SelfRewardConfig(judge="verifier"), None), (SelfRewardConfig(), weak),
                         (SelfRewardConfig(judge="hybrid"), weak)):
        assert _self_instruct_plan(inp(cfg, metrics)) == [] and _candidate_ids(inp(cfg, metrics)) == [0, 1]


def test_spar_searches_each_distinct_failure_once_and_shares_the_cap_over_prompts():
    from services.methods.spar import pick_failed

    # prompt 1 failed five times (two answers identical but for spacing), prompts 2 and 3 once each
    samples = [{"id": i, "prompt_id": 1, "text": t} for i, t in enumerate(["a b", "a  b", "c", "d", "e"])]
    samples += [{"id": 10, "prompt_id": 2, "text": "x"}, {"id": 20, "prompt_id": 3, "text": "y"}]
    failed = [0, 1, 2, 3, 4, 10, 20]
    picked = pick_failed(failed, samples, cap=4, seed=0)
    assert len(picked) == 4 and len(set(picked)) == 4
    assert {10, 20} <= set(picked)  # every prompt gets a search before any prompt gets a second
    assert not {0, 1} <= set(picked)  # the duplicate answer is searched once at most
    assert sorted(pick_failed(failed, samples, cap=100, seed=0)) == [0, 2, 3, 4, 10, 20]
    assert pick_failed(failed, samples, cap=4, seed=0) == picked  # the same seed, the same choice
    assert pick_failed([], samples, cap=4, seed=0) == [] and pick_failed(failed, samples, cap=0, seed=0) == []


def test_spar_searches_answers_that_ended_before_answers_cut_at_the_limit():
    from services.methods.spar import pick_failed

    # prompt 1: two cut answers and one that ended; prompt 2: one cut; prompt 3: one that ended
    samples = [{"id": 1, "prompt_id": 1, "text": "loop loop", "finish_reason": "length"},
               {"id": 2, "prompt_id": 1, "text": "junk", "finish_reason": "length"},
               {"id": 3, "prompt_id": 1, "text": "an answer", "finish_reason": "stop"},
               {"id": 4, "prompt_id": 2, "text": "tail", "finish_reason": "length"},
               {"id": 5, "prompt_id": 3, "text": "done", "finish_reason": "stop"}]
    failed = [1, 2, 3, 4, 5]
    assert sorted(pick_failed(failed, samples, cap=2, seed=0)) == [3, 5]  # the cap goes to ended answers
    three = pick_failed(failed, samples, cap=3, seed=0)
    assert sorted(three[:2]) == [3, 5] and three[2] in (1, 4)  # then cut ones, one per prompt first
    assert sorted(pick_failed(failed, samples, cap=10, seed=0)) == [1, 2, 3, 4, 5]  # room for all: all


def test_spar_skips_the_judge_check_and_teaching_verdicts_when_the_verifier_writes_every_verdict():
    from services.methods.base import PlanInput
    from services.methods.spar import _bootstrap_prompts, _model_judges, _stages

    def check_plan(cfg, data):
        stage = next(s for s in _stages(cfg, False) if s.name == "judge_check")
        return stage.plan(PlanInput(prompt_ids=[p["id"] for p in data.run_prompts()], eval_prompt_ids=[],
                                    round_number=1, total_rounds=1, shard_size=4, config=cfg, data=data))

    all_constrained, mixed = Data(10, n_plain=0), Data(10, n_plain=2)
    hybrid = SPaRConfig(judge="hybrid", judge_check_prompts=4)
    assert not _model_judges(hybrid, all_constrained) and check_plan(hybrid, all_constrained) == []
    # with prompts the verifier cannot judge, the refiner judges those, so it is checked first
    assert _model_judges(hybrid, mixed) and check_plan(hybrid, mixed)[0]["prompt_ids"] == [6, 7, 8, 9]
    assert _model_judges(SPaRConfig(), all_constrained) and check_plan(SPaRConfig(judge_check_prompts=4), all_constrained)
    assert not _model_judges(SPaRConfig(judge="verifier"), mixed)
    # with no check to run, no prompt is held back for its probe: all ten teach the refiner
    boot = next(s for s in _stages(hybrid, False) if s.name == "bootstrap_judge")
    assert boot.plan(PlanInput(prompt_ids=list(range(10)), eval_prompt_ids=[], round_number=1, total_rounds=1,
                               shard_size=4, config=hybrid, data=all_constrained)) == [{"role": "judge_bootstrap"}]
    assert _bootstrap_prompts(PlanInput(prompt_ids=list(range(10)), eval_prompt_ids=[], round_number=1,
                                        total_rounds=1, shard_size=4, config=hybrid, data=all_constrained)) \
        == list(range(10))
    assert hybrid.constrained_split(mixed)[0] == [0, 1, 2, 3, 4, 5]  # probing: the last four are held back


class RoundData(Data):
    """A round's samples, refiner judgments and search trees, for refiner_job."""

    def __init__(self, prompts, samples, judgments, trees, metrics=None):
        super().__init__(0, n_plain=0, metrics=metrics)
        self._prompts = prompts
        self._samples, self._judgments, self._trees = samples, judgments, trees
        self.round_number = 2

    def samples(self, role):
        return self._samples

    def prompts(self, ids):
        return {p["id"]: {**p, "messages": [{"role": "user", "content": f"prompt {p['id']}"}]}
                for p in self._prompts if p["id"] in set(ids)}

    def judgments(self, kind, role=None):
        return self._judgments

    def refinement_trees(self):
        return self._trees

    def latest_version(self, role):
        return {"adapter": "/adapters/refiner-1", "version_id": 5}


def test_spar_refiner_trains_only_on_judgments_it_wrote_itself():
    from services.methods.spar import refiner_job

    prompts = [{"id": 1, "constraints": NO_COMMA}, {"id": 2, "constraints": None}]
    samples = [{"id": 11, "prompt_id": 1, "index": 0, "text": "a, b"}, {"id": 22, "prompt_id": 2, "index": 0, "text": "c"}]
    judgments = [{"sample_id": s, "vote_index": 0, "score": None, "passed": False, "rationale": f"why {s}\nVerdict: no"}
                 for s in (11, 22)]
    node = {"id": 1, "path": "0", "parent_path": None, "depth": 0, "text": "a, b", "passed": False, "judgment": "why 11\nVerdict: no"}
    child = {"id": 2, "path": "0.0", "parent_path": "0", "depth": 1, "text": "a b", "passed": True, "judgment": "ok\nVerdict: yes"}
    trees = [{"sample_id": 11, "prompt_id": 1, "sample_index": 0, "nodes": [node, child]}]

    def judged(cfg, metrics=None):
        job = refiner_job(RoundData(prompts, samples, judgments, trees, metrics), cfg)
        return [it["response"] for it in job.items if not it["response"].startswith("Refined response:")], job.items

    # the refiner judged everything: its agreeing votes and the search's verdicts all teach it
    assert sorted(judged(SPaRConfig())[0]) == ["ok\nVerdict: yes", "why 11\nVerdict: no", "why 22\nVerdict: no"]
    # hybrid: the verifier wrote the verdicts on the constrained prompt, the refiner only prompt 2's
    texts, items = judged(SPaRConfig(judge="hybrid"))
    assert texts == ["why 22\nVerdict: no"]
    assert [it["response"] for it in items if it["response"].startswith("Refined response:")] == ["Refined response:\na b"]
    # after a failed judge check the verifier judged every constrained prompt too
    assert judged(SPaRConfig(), {"judge_check": {"action": "verifier"}})[0] == ["why 22\nVerdict: no"]


def test_a_rewrite_cut_at_the_token_limit_is_no_rewrite():
    from services.generation.base import FINISH_AT_LIMIT, Completion
    from services.refinement.tasks import rewrite_of

    assert rewrite_of(Completion("Refined response:\nall lowercase now", 6, "stop")) == "all lowercase now"
    assert rewrite_of(Completion("Refined response:\nall lowercase and then it kept", 96, FINISH_AT_LIMIT)) is None
    assert rewrite_of(Completion("", 0, "stop")) is None
