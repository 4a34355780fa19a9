"""ReST-EM, Self-Rewarding and SPaR: two rounds each through the API with real workers on a tiny
model (judgments scripted by tests/fakes.py), checking that each method's data has its shape and
that versions chain the way the method says."""
from __future__ import annotations

from sqlmodel import select

from shared import crud
from shared.db import session_scope
from shared.models import (
    FINISH_AT_LIMIT, Judgment, ModelVersion, PreferencePair, Prompt, PromptSet, RefinementNode, Round, Run, Sample,
    StageTask,
)
from tests.e2e.helpers import stage_status, submit, upload, wait_run
from tests.fakes import judge_passes, rubric_score

TRAIN = {"learning_rate": 1e-3, "epochs": 1, "batch_size": 8, "lora_r": 4, "lora_alpha": 8}
NO_COMMA = [{"id": "punctuation:no_comma", "kwargs": {}}]


def _prompts(n: int, **extra) -> list[dict]:
    words = "apple river cloud stone green quick lazy sea".split()
    return [{"prompt": f"write about the {words[i % 8]} {i}", **extra} for i in range(n)]


def _versions(run_id: int) -> dict[str, ModelVersion]:
    with session_scope() as s:
        return {v.key.split(":", 2)[2]: v for v in s.exec(select(ModelVersion).where(ModelVersion.run_id == run_id))}


def test_rest_em_keeps_at_most_k_correct_and_trains_from_the_base(api, workers, tiny_model):
    client, a, _ = api
    train = upload(client, a, _prompts(6, constraints=NO_COMMA), name="rest")
    heldout = upload(client, a, _prompts(4, constraints=NO_COMMA), name="rest-eval", split="heldout")
    run_id = submit(client, a, method="rest_em", base_model=tiny_model, prompt_set_ids=[train],
                    eval_prompt_set_ids=[heldout], rounds=2,
                    # the random tiny model never ends its turn within 6 tokens: keep its cut answers
                    config={"samples_per_prompt": 6, "max_correct_per_prompt": 2, "max_new_tokens": 6,
                            "keep_truncated": True, "eval_judge_samples": 2, **TRAIN})
    run = wait_run(client, a, run_id, workers)
    versions = _versions(run_id)
    base_id = client.get("/v1/models", headers=a).json()["items"]
    base_id = next(m["id"] for m in base_id if m["key"] == f"base:{tiny_model}")
    for rnd in run["round_details"]:
        assert stage_status(rnd) == dict.fromkeys(["generate", "verify", "train", "eval_generate", "evaluate"], "succeeded")
        train_m = rnd["metrics"]["train"]
        assert 0 < train_m["kept"] <= 2 * 6 and train_m["kept"] <= train_m["correct"]
        assert train_m["examples"] == train_m["kept"]
        ev = rnd["metrics"]["eval"]
        assert ev["n"] == 4 and ev["prompt_strict_acc"] is not None
        assert ev["n_judged"] == 4 and 0 <= ev["mean_judge_score"] <= 5  # scripted rubric, all parsed
    # every version is trained from θ0; round 2 samples from round 1's version
    assert versions["round:1:policy"].parent_id == versions["round:2:policy"].parent_id == base_id
    assert run["round_details"][1]["policy_version_id"] == versions["round:1:policy"].id, run["round_details"][0]["metrics"].get("gate")
    assert "eval_base" in run["round_details"][0]["metrics"]
    with session_scope() as s:
        r1 = s.exec(select(Round).where(Round.run_id == run_id, Round.number == 1)).one()
        verdicts = s.exec(select(Judgment).join(Sample).where(Sample.round_id == r1.id, Sample.role == "policy")).all()
        assert len(verdicts) == 36 and all(j.kind == "verifier" for j in verdicts)
        texts = {x.id: x.text for x in s.exec(select(Sample).where(Sample.round_id == r1.id))}
        assert all(j.passed == ("," not in texts[j.sample_id]) for j in verdicts)
    png = client.get(f"/v1/runs/{run_id}/plot.png", headers=a)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_self_rewarding_bootstraps_m1_and_drops_ties(api, workers, tiny_model):
    client, a, _ = api
    seeds = upload(client, a, [{"prompt": f"name a {w} thing", "reference": f"a {w} stone ."}
                               for w in ("red", "blue", "small", "large", "old")], name="ift")
    eft = upload(client, a, [{"prompt": "judge: is 'hi' a greeting?", "reference": "It is relevant.\nScore: 4"}],
                 name="eft")
    heldout = upload(client, a, _prompts(2, constraints=NO_COMMA), name="sr-eval", split="heldout")
    run_id = submit(client, a, method="self_reward", base_model=tiny_model, prompt_set_ids=[seeds], rounds=2,
                    eval_prompt_set_ids=[heldout],
                    # the tiny random model never ends an answer: every candidate is cut at the
                    # limit, so the rule that never chooses a cut answer is turned off here
                    config={"eft_prompt_set_ids": [eft], "new_prompts_per_round": 6, "few_shot": 3,
                            "samples_per_prompt": 4, "max_new_tokens": 12, "judge_samples": 3,
                            "chosen_must_end": False,
                            # nor does it write a request a seed could begin ("name a …"): any new
                            # prompt is kept, so that the self-instruction path runs
                            "new_prompts_like_seeds": False,
                            "eval_judge_samples": 1, "bootstrap_learning_rate": 1e-3, **TRAIN})
    run = wait_run(client, a, run_id, workers)
    r1, r2 = run["round_details"]
    # no seed prompt has constraints: no judge bootstrap samples and no judge check to run
    assert stage_status(r1) == {**dict.fromkeys(["bootstrap", "self_instruct", "generate", "judge", "pairs", "train",
                                                 "eval_generate", "evaluate"], "succeeded"),
                                "bootstrap_samples": "skipped", "judge_check": "skipped"}
    assert stage_status(r2)["bootstrap"] == "skipped"
    versions = _versions(run_id)
    m1 = versions["round:0:policy"]
    # round 1 evaluates M1 apart from the start (θ0) and from what its DPO produced; round 2 only its own
    assert {k: r1["metrics"][k]["n"] for k in ("eval", "eval_base", "eval_policy")} == dict.fromkeys(
        ["eval", "eval_base", "eval_policy"], 2)
    assert "eval_policy" not in r2["metrics"] and r2["metrics"]["eval"]["n"] == 2
    assert r1["metrics"]["gate"]["compared_with_version"] == m1.id  # see test_regression.py
    with session_scope() as s:
        row = s.exec(select(Round).where(Round.run_id == run_id, Round.number == 1)).one()
        writers = {x.generator_version_id for x in crud.samples_of_round(s, round_id=row.id, role="eval_policy")}
        assert writers == {m1.id}  # written by M1
    assert r1["policy_version_id"] == m1.id and r1["metrics"]["bootstrap"]["sft_examples"] == 6
    assert versions["round:1:policy"].parent_id == m1.id
    assert r2["policy_version_id"] == versions["round:1:policy"].id == versions["round:2:policy"].parent_id
    with session_scope() as s:
        for rnd in (r1, r2):
            row = s.exec(select(Round).where(Round.run_id == run_id, Round.number == rnd["number"])).one()
            new = s.exec(select(Prompt).join(PromptSet).where(PromptSet.source_round_id == row.id)).all()
            assert 0 < len(new) <= 6
            pairs = s.exec(select(PreferencePair).where(PreferencePair.round_id == row.id)).all()
            assert pairs and all(p.source == "judge_best_worst" for p in pairs)
            for p in pairs:  # chosen scored strictly higher than rejected: ties were dropped
                assert rubric_score(p.chosen) > rubric_score(p.rejected) and p.margin > 0
            assert rnd["metrics"]["pair_stats"]["pairs"] == len(pairs)


def test_self_rewarding_with_the_judge_apart_trains_a_judge_version_and_keeps_the_start(api, workers, tiny_model):
    client, a, _ = api
    seeds = upload(client, a, [{"prompt": f"name a {w} thing", "reference": f"a {w} stone ."}
                               for w in ("red", "blue", "small", "large")], name="ift-apart")
    eft = upload(client, a, [{"prompt": "judge: is 'hi' a greeting?", "reference": "It is relevant.\nScore: 4"}],
                 name="eft-apart")
    heldout = upload(client, a, _prompts(2, constraints=NO_COMMA), name="sr-apart-eval", split="heldout")
    run_id = submit(client, a, method="self_reward", base_model=tiny_model, prompt_set_ids=[seeds], rounds=1,
                    eval_prompt_set_ids=[heldout],
                    config={"judge_apart": True, "eft_prompt_set_ids": [eft], "new_prompts_per_round": 4,
                            "few_shot": 3, "samples_per_prompt": 3, "max_new_tokens": 12, "judge_samples": 2,
                            "chosen_must_end": False, "new_prompts_like_seeds": False, "eval_judge_samples": 1,
                            "bootstrap_learning_rate": 1e-3, **TRAIN})
    (r1,) = wait_run(client, a, run_id, workers)["round_details"]
    assert stage_status(r1)["bootstrap"] == stage_status(r1)["judge"] == stage_status(r1)["train"] == "succeeded"
    versions = _versions(run_id)
    judge = versions["round:0:judge"]
    assert "round:0:policy" not in versions  # no M1: the bootstrap trained the judge alone
    with session_scope() as s:
        run = s.get(Run, run_id)
        row = s.exec(select(Round).where(Round.run_id == run_id, Round.number == 1)).one()
        judged = s.exec(select(StageTask).where(StageTask.round_id == row.id, StageTask.stage == "judge")).all()
    # the judge adapter learnt the EFT example only (no instruction data), from θ0
    assert judge.parent_id == run.base_version_id and r1["metrics"]["bootstrap"]["sft_examples"] == 1
    assert r1["metrics"]["bootstrap"]["ift_examples"] == 0
    # round 1's policy is θ0 itself, which the round's DPO trains from; the judge version judges
    assert r1["policy_version_id"] == run.base_version_id == versions["round:1:policy"].parent_id
    assert judged and {t.payload["model"] for t in judged} == {"role:judge"}
    assert "eval_policy" not in r1["metrics"] and r1["metrics"]["eval"]["n"] == 2


def test_spar_pairs_come_from_one_tree_and_the_refiner_trains(api, workers, tiny_model):
    client, a, _ = api
    train = upload(client, a, _prompts(5, constraints=NO_COMMA), name="spar")
    run_id = submit(client, a, method="spar", base_model=tiny_model, prompt_set_ids=[train], rounds=2,
                    config={"samples_per_prompt": 3, "max_new_tokens": 10, "judge_votes": 3, "branching": 2,
                            "keep": 1, "max_depth": 2, "search_budget": 4, "bootstrap_judge": False,
                            "judge_check_prompts": 0, **TRAIN})
    run = wait_run(client, a, run_id, workers)
    versions = _versions(run_id)
    for rnd in run["round_details"]:
        assert stage_status(rnd) == {**dict.fromkeys(["generate", "judge", "refine", "pairs", "train", "train_refiner"],
                                                     "succeeded"),
                                    **dict.fromkeys(["bootstrap_samples", "bootstrap_judge", "judge_check"], "skipped")}
        with session_scope() as s:
            row = s.exec(select(Round).where(Round.run_id == run_id, Round.number == rnd["number"])).one()
            samples = {x.id: x for x in s.exec(select(Sample).where(Sample.round_id == row.id))}
            failed = [x for x in samples.values() if not judge_passes(x.text)]
            roots = s.exec(select(RefinementNode).where(RefinementNode.sample_id.in_(list(samples)),
                                                        RefinementNode.depth == 0)).all()
            assert {r.sample_id for r in roots} == {x.id for x in failed}  # one search per failed response
            pairs = s.exec(select(PreferencePair).where(PreferencePair.round_id == row.id)).all()
            assert len(pairs) == len(failed) > 0
            for p in pairs:  # rejected is the original, chosen a refinement of it found in its own tree
                root = next(x for x in failed if x.prompt_id == p.prompt_id and x.index == p.index)
                assert p.rejected == root.text and p.source == "refined_vs_original"
                nodes = s.exec(select(RefinementNode).where(RefinementNode.sample_id == root.id,
                                                            RefinementNode.text == p.chosen)).all()
                assert len(nodes) == 1 and nodes[0].passed and nodes[0].depth >= 1
        assert rnd["metrics"]["train_refiner"]["refinement_examples"] >= len(pairs)
    refiner1, refiner2 = versions["round:1:refiner"], versions["round:2:refiner"]
    base = next(m["id"] for m in client.get("/v1/models", headers=a).json()["items"] if m["key"] == f"base:{tiny_model}")
    assert refiner2.parent_id == refiner1.id and refiner1.parent_id == base  # round 1 refines with the base
    assert versions["round:2:policy"].parent_id == versions["round:1:policy"].id


POSTSCRIPT = [{"id": "detectable_content:postscript", "kwargs": {"postscript_marker": "P.S."}}]


def test_spar_hybrid_refinement_fixes_what_has_a_mechanical_fix(api, workers, tiny_model):
    """refine_mode hybrid under the verifier: a failed answer that ended gets its mechanical fix
    (a P.S. line) as the depth-1 solution; a root cut at the limit is never fixed itself, so its
    solution is the fix of the refiner's rewrite, one level down. Every chosen answer passes.
    The tiny model's answers run to the limit; the DEGRADE prompts get an answer that ended."""
    from services.curriculum.refinements import refine
    from services.judging import verifier
    from tests.fakes import DEGRADE

    client, a, _ = api
    items = _prompts(3, constraints=POSTSCRIPT) + [{"prompt": f"{DEGRADE} say something sweet {i}",
                                                    "constraints": POSTSCRIPT} for i in range(2)]
    train = upload(client, a, items, name="spar-hybrid")
    run_id = submit(client, a, method="spar", base_model=tiny_model, prompt_set_ids=[train], rounds=1,
                    config={"samples_per_prompt": 3, "max_new_tokens": 10, "judge": "verifier", "refine_mode": "hybrid",
                            "branching": 2, "keep": 1, "max_depth": 2, "search_budget": 4, **TRAIN})
    run = wait_run(client, a, run_id, workers)
    (rnd,) = run["round_details"]
    with session_scope() as s:
        row = s.exec(select(Round).where(Round.run_id == run_id)).one()
        samples = {x.id: x for x in s.exec(select(Sample).where(Sample.round_id == row.id))}
        prompts = {p.id: p for p in s.exec(select(Prompt).where(Prompt.id.in_({x.prompt_id for x in samples.values()})))}
        nodes = s.exec(select(RefinementNode).where(RefinementNode.sample_id.in_(list(samples)))).all()
        pairs = s.exec(select(PreferencePair).where(PreferencePair.round_id == row.id)).all()
    by_path = {(n.sample_id, n.path): n for n in nodes}
    solutions = {}
    for n in sorted(nodes, key=lambda n: n.id):
        if n.passed and n.depth > 0:
            solutions.setdefault(n.sample_id, n)
    assert solutions and len(pairs) == len(solutions)  # every search ends in a fix: no junk tail has no P.S. fix
    by_fix = 0
    for sample_id, sol in solutions.items():
        root, prompt = samples[sample_id], prompts[samples[sample_id].prompt_id]
        parent = by_path[(sample_id, sol.parent_path)]
        assert sol.text == refine(parent.text, POSTSCRIPT, prompt.messages[-1]["content"])
        assert verifier.verify(sol.text, POSTSCRIPT, prompt.messages[-1]["content"]).strict
        if root.finish_reason == FINISH_AT_LIMIT or refine(root.text, POSTSCRIPT, prompt.messages[-1]["content"]) is None:
            assert sol.depth == 2 and parent.text != root.text  # the root went to the refiner first
        else:
            assert sol.depth == 1 and parent.text == root.text
            by_fix += 1
    assert 0 < by_fix < len(solutions)  # both paths were taken
    assert rnd["metrics"]["pair_stats"]["solved_by_fix"] == len(solutions)  # every last step was a fix
