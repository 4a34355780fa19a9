"""SPaR's `refine_mode: hybrid`: a failed answer with a mechanical fix gets that verified edit as its
one candidate, without a refiner call; a root cut at its limit, a prompt without constraints or an
instruction without a fix still go to the refiner."""
from __future__ import annotations

import json

import pytest

from services.generation.base import Completion
from services.methods.base import parse_config
from services.methods.spar import SPaRConfig
from services.refinement import tasks
from services.refinement.search import SearchConfig, tree_searches

LOWER = [{"id": "change_case:english_lowercase", "kwargs": {}}]
NO_FIX = [{"id": "keywords:letter_frequency", "kwargs": {"letter": "z", "let_frequency": 9, "let_relation": "at least"}}]


def prompt(constraints, cut_root=None):
    return {"messages": [{"role": "user", "content": "describe the lake in lowercase"}], "constraints": constraints,
            "cut_root": cut_root}


class Recorder:
    """A generation backend that records what the refiner was asked and answers with a fixed rewrite."""

    def __init__(self):
        self.asked: list[list] = []

    def generate(self, requests, model, params):
        self.asked.append(requests)
        return [[Completion(f"Refined response:\nrewrite {k} of {i}", 5, "stop") for k in range(params.n)]
                for i in range(len(requests))]


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(tasks, "backend", lambda: rec)
    return rec


def calls(mode: str):
    return tasks.model_calls("refiner", "refiner", 3, {"temperature": 0.7, "max_new_tokens": 32, "mode": mode},
                             {"judge": "verifier", "votes": 1, "temperature": 0.7, "max_new_tokens": 8}, seed=0)


def test_a_fixable_failure_gets_its_verified_fix_and_no_refiner_call(recorder):
    refine_many, _, counter = calls("hybrid")
    out = refine_many([(prompt(LOWER), "The Lake Is Calm.", "Verdict: no")])
    assert out == [["the lake is calm.", None, None]]
    assert recorder.asked == [] and counter == {"n": 0, "fixes": 1}


def test_what_has_no_fix_goes_to_the_refiner_in_one_call(recorder):
    refine_many, _, counter = calls("hybrid")
    requests = [(prompt(LOWER), "The Lake Is Calm.", "Verdict: no"),  # fixed
                (prompt(LOWER, cut_root="The Lake Went On And"), "The Lake Went On And", "Verdict: no"),  # cut root
                (prompt([]), "Some Answer", "Verdict: no"),  # no constraints
                (prompt(NO_FIX), "the lake", "Verdict: no")]  # an instruction without a mechanical fix
    out = refine_many(requests)
    assert out[0] == ["the lake is calm.", None, None]
    assert [len(o) for o in out[1:]] == [3, 3, 3] and all(o[0].startswith("rewrite 0 of") for o in out[1:])
    assert len(recorder.asked) == 1 and len(recorder.asked[0]) == 3 and counter == {"n": 1, "fixes": 1}
    # a rewrite of a cut root is no cut root itself: the refiner's text can get the fix at the next depth
    assert tasks.mechanical_fix(prompt(LOWER, cut_root="The Lake Went On And"), "Rewrite Of It") == "rewrite of it"


@pytest.mark.parametrize("text", [
    "The Lake Is Calm.\nuser\nDescribe The River.",  # a new chat turn begun inside the answer
    "Sure. Describe The Lake In Lowercase Please And Describe The Lake In Lowercase.",  # the prompt restated
    "The Lake Is Calm And Clear Today. " * 4,  # runaway repetition
])
def test_an_answer_unsound_beyond_its_broken_instruction_goes_to_the_refiner(recorder, text):
    """Its fix would pass the verifier, and the leak, the restated prompt or the repetition would be
    trained as right on the chosen side: the refiner rewrites it instead."""
    long_prompt = {"messages": [{"role": "user", "content": "describe the lake in lowercase please and describe "
                                                            "the lake in lowercase"}],
                   "constraints": LOWER, "cut_root": None}
    assert tasks.mechanical_fix(long_prompt, text) is None
    refine_many, _, counter = calls("hybrid")
    out = refine_many([(long_prompt, text, "Verdict: no")])
    assert out[0][0].startswith("rewrite 0 of") and counter == {"n": 1, "fixes": 0}
    # the same prompt's sound failure still gets its fix
    assert tasks.mechanical_fix(long_prompt, "The Lake Is Calm.") == "the lake is calm."


def test_self_mode_never_fixes(recorder):
    refine_many, _, counter = calls("self")
    out = refine_many([(prompt(LOWER), "The Lake Is Calm.", "Verdict: no")])
    assert out[0][0] == "rewrite 0 of 0" and counter == {"n": 1, "fixes": 0}


def test_a_hybrid_search_solves_a_fixable_root_at_depth_one(recorder):
    refine_many, judge_many, _ = calls("hybrid")
    [result] = tree_searches([(prompt(LOWER), "The Lake Is Calm.", (False, 0.0, "Verdict: no"))],
                             refine_many=refine_many,
                             judge_many=judge_many,
                             config=SearchConfig(branching=3, keep=1, max_depth=2, budget=6))
    assert result.solution is not None and result.solution.text == "the lake is calm."
    assert result.solution.depth == 1 and result.stopped == "solved" and recorder.asked == []


def test_refine_mode_is_checked():
    assert parse_config(SPaRConfig, {"refine_mode": "hybrid"})[0].refine_mode == "hybrid"
    config, errors = parse_config(SPaRConfig, {"refine_mode": "oracle"})
    assert config is None and errors[0]["loc"] == ["config", "refine_mode"]


class Trees:
    """The two RoundData reads round_pairs makes."""

    def __init__(self, trees):
        self.trees = trees
        self.metrics = {}  # no judge check this round

    def refinement_trees(self):
        return self.trees

    def prompts(self, ids):
        return {i: prompt(LOWER) for i in ids}


def node(i, depth, text, passed):
    return {"id": i, "path": "0" + ".0" * depth, "parent_path": None if depth == 0 else "0" + ".0" * (depth - 1),
            "depth": depth, "text": text, "passed": passed, "judgment": ""}


def test_round_stats_count_the_solutions_that_are_mechanical_fixes():
    from services.methods.spar import round_pairs

    def tree(sid, root, *later, cut=False):
        nodes = [node(10 * sid, 0, root, False)] + [node(10 * sid + d, d, text, ok) for d, (text, ok) in enumerate(later, 1)]
        return {"sample_id": sid, "prompt_id": 7, "sample_index": sid, "root": root, "root_cut": cut, "nodes": nodes}

    trees = [tree(1, "The Lake.", ("the lake.", True)),  # the root's fix
             tree(2, "The Pond.", ("a calm pond.", True)),  # the refiner's own rewrite
             tree(3, "The Sea.", ("The Sea Again", False), ("the sea again", True)),  # the fix of a rewrite
             tree(4, "The River", ("the river", True), cut=True),  # a cut root: the refiner wrote it
             tree(5, "The Bay."),  # unsolved
             # a leaked turn is never fixed mechanically: a rewrite equal to its fix is the refiner's
             tree(6, "The Hill.\nuser\nMore", ("the hill.\nuser\nmore", True)),
             # a cut root copied back by a rewrite is still the cut root: its solution is no fix
             tree(7, "The Dune Went", ("The Dune Is", False), ("The Dune Went", False), ("the dune went", True),
                  cut=True)]
    sound = [("the lake.", "The Lake."), ("a calm pond.", "The Pond."), ("the sea again", "The Sea."),
             ("the river", "The River"), ("the dune went", "The Dune Went")]
    pairs, stats = round_pairs(Trees(trees), SPaRConfig(refine_mode="hybrid"))  # the refiner judged
    assert [(p["chosen"], p["rejected"]) for p in pairs] == sound[:4] + [
        ("the hill.\nuser\nmore", "The Hill.\nuser\nMore")] + sound[4:]
    assert {k: stats[k] for k in ("searched", "solved", "solved_by_fix", "dropped_for_length", "dropped_as_unsound")} == {
        "searched": 7, "solved": 6, "solved_by_fix": 2, "dropped_for_length": 0, "dropped_as_unsound": 0}
    # under the verifier, which checks only the instructions, the leaked turn is no chosen answer
    pairs, stats = round_pairs(Trees(trees), SPaRConfig(refine_mode="hybrid", judge="verifier"))
    assert [(p["chosen"], p["rejected"]) for p in pairs] == sound and stats["dropped_as_unsound"] == 1
    assert "solved_by_fix" not in round_pairs(Trees(trees), SPaRConfig())[1]


def test_spar_can_balance_the_lengths_of_its_pairs():
    """Fixes that add material make the chosen side the longer one; length_balance 0.5 drops the
    widest of those gaps until neither side is longer in more pairs than the other."""
    from services.methods.spar import round_pairs

    def tree(sid, root, fixed):
        return {"sample_id": sid, "prompt_id": 7, "sample_index": sid, "root": root, "root_cut": False,
                "nodes": [node(10 * sid, 0, root, False), node(10 * sid + 1, 1, fixed, True)]}

    trees = [tree(1, "a b", "a b c d e"), tree(2, "a b", "a b c"), tree(3, "a b c", "a b"), tree(4, "A B", "a b")]
    pairs, stats = round_pairs(Trees(trees), SPaRConfig(length_balance=0.5))
    assert [p["chosen"] for p in pairs] == ["a b c", "a b", "a b"]  # the widest chosen-longer gap went
    assert stats["dropped_for_length"] == 1 and stats["pairs"] == 3
    assert len(round_pairs(Trees(trees), SPaRConfig())[0]) == 4
    assert parse_config(SPaRConfig, {"length_balance": 0.2})[1][0]["loc"] == ["config", "length_balance"]


def test_spar_can_drop_the_pairs_whose_fix_only_appends_after_the_answer():
    """Real fixes: an end phrase and a postscript are appended after the finished answer, and quotes
    and a JSON string wrap it (dropped: the pair's one contrast at the end is "end here" against
    "go on", or an added closing mark raised as an ending); lowercase and a title change the answer
    itself (kept). Length balancing applies to what is left."""
    from services.curriculum.refinements import refine
    from services.methods.base import drop_continuations, is_continuation
    from services.methods.spar import round_pairs

    answer = "The lake is calm.\nBirds sing at dawn."
    cases = {"startend:end_checker": {"end_phrase": "Any other questions?"},
             "detectable_content:postscript": {"postscript_marker": "P.S."},
             "change_case:english_lowercase": {}, "detectable_format:title": {},
             "detectable_format:json_format": {}, "startend:quotation": {}}
    trees = []
    for sid, (ident, kwargs) in enumerate(cases.items(), 1):
        fixed = refine(answer, [{"id": ident, "kwargs": kwargs}])
        assert fixed and fixed != answer, ident
        trees.append({"sample_id": sid, "prompt_id": 7, "sample_index": sid, "root": answer, "root_cut": False,
                      "nodes": [node(10 * sid, 0, answer, False), node(10 * sid + 1, 1, fixed, True)]})
    pairs, stats = round_pairs(Trees(trees), SPaRConfig(drop_continuations=True))
    assert [p["index"] for p in pairs] == [3, 4] and stats["dropped_as_continuation"] == 4
    assert stats["pairs"] == 2
    kept, _ = round_pairs(Trees(trees), SPaRConfig())
    assert len(kept) == 6 and "dropped_as_continuation" not in round_pairs(Trees(trees), SPaRConfig())[1]
    # length balancing sees only what is left: of the two, only the title changes the word count
    # (chosen longer, no pair the other way), so at 0.5 it goes
    pairs, stats = round_pairs(Trees(trees), SPaRConfig(drop_continuations=True, length_balance=0.5))
    assert [p["index"] for p in pairs] == [3] and stats["dropped_for_length"] == 1
    # a root cut at the limit has no end of turn to lower: its continuation stays
    trees[0]["root_cut"] = True
    pairs, stats = round_pairs(Trees(trees), SPaRConfig(drop_continuations=True))
    assert [p["index"] for p in pairs] == [1, 3, 4] and stats["dropped_as_continuation"] == 3
    # whitespace aside, and only text after the rejected ending counts (before it, or a cut, does not)
    assert is_continuation("a b\n\nc", "a  b ") and not is_continuation("a b", "a b\n")
    assert is_continuation("x a b c", "a b") and not is_continuation("x a b", "a b") and not is_continuation("a", "a b")
    # a wrap: the rejected ending, then a closing mark (as written, or escaped in a JSON string);
    # an edit of the ending itself (a case change, a cut, a layout around the same last words) is not one
    long = 'He said "go".\nThen the rain stopped over the hills.'
    assert is_continuation('"' + long + '"', long) and is_continuation('{"answer": ' + json.dumps(long) + "}", long)
    assert is_continuation('"' + long + '\n\nP.S. Stay dry."', long)
    assert not is_continuation(long.lower(), long) and not is_continuation("<<Rain>>\n\n" + long, long)
    assert not is_continuation("* He said go.\n* Then the rain stopped over the hills.", long)
    assert not is_continuation('{"a": 1}', '{"a": 1}\nHope this helps with the weather!') and not is_continuation("", "")
    assert drop_continuations([]) == ([], {"dropped_as_continuation": 0})
    assert parse_config(SPaRConfig, {"drop_continuations": "sometimes"})[1][0]["loc"] == ["config", "drop_continuations"]


def test_a_fix_that_only_moves_whitespace_leaves_the_turn_to_the_refiner(monkeypatch):
    import services.curriculum.refinements as refinements

    monkeypatch.setattr(refinements, "refine", lambda text, constraints, prompt_text="": text + "\n\n")
    assert tasks.mechanical_fix(prompt(LOWER), "The Lake.") is None


def test_the_cut_root_is_recognised_when_respaced():
    assert tasks.mechanical_fix(prompt(LOWER), "The Lake  Went ") == "the lake  went "
    assert tasks.mechanical_fix(prompt(LOWER, cut_root="The Lake Went"), "The Lake  Went ") is None


def test_a_fix_the_judge_refuses_is_refined_by_the_refiner_one_level_down(recorder):
    """Under a model judge the fix is only a candidate: refused, the next expansion of the fixed text
    (which the verifier already passes, so it has no fix of its own) goes to the refiner."""
    refine_many, _, counter = calls("hybrid")
    judged = []

    def refuse_the_fix(requests):  # the refiner's rewrites pass, the fix does not
        judged.append([texts for _, texts in requests])
        return [[(t.startswith("rewrite"), float(t.startswith("rewrite")), "Verdict: no") for t in texts]
                for _, texts in requests]

    [result] = tree_searches([(prompt(LOWER), "The Lake Is Calm.", (False, 0.0, "Verdict: no"))],
                             refine_many=refine_many, judge_many=refuse_the_fix,
                             config=SearchConfig(branching=3, keep=1, max_depth=2, budget=6))
    assert judged[0] == [["the lake is calm."]]
    assert len(recorder.asked) == 1 and "the lake is calm." in str(recorder.asked[0])
    assert result.solution is not None and result.solution.depth == 2 and result.solution.text.startswith("rewrite")
    assert counter["fixes"] == 1


def test_spar_can_drop_the_pairs_whose_refinement_is_a_new_text():
    """A refinement edits the failed answer: min_shared_words drops a pair only when the chosen
    answer neither takes that share of its words from the rejected one nor keeps that share of the
    rejected one's words. Cases from a measured round: the refiner restating its own prompt and a
    bare tag go; a case change, a long addition and a long cut stay."""
    from services.methods.spar import drop_unrelated, round_pairs, shared_words

    answer = "Wolves live in packs. They hunt together at night. Pups stay near the den."
    cases = [
        ("* A response to the user's request below was judged not to follow all of its instructions.", False),
        ("<reply>(juliette@wireless.net)</reply>", False),
        (answer.upper(), True),  # case ignored: every word shared
        (answer + " Wolves howl to keep in touch over long distances, and a pack can cover many miles "
                  "in one day while it follows its prey across the snow.", True),  # keeps all of the original
        ("Wolves live in packs.", True),  # all of its words come from the original
    ]
    trees = [{"sample_id": i, "prompt_id": 7, "sample_index": i, "root": answer, "root_cut": False,
              "nodes": [node(10 * i, 0, answer, False), node(10 * i + 1, 1, text, True)]}
             for i, (text, _) in enumerate(cases, 1)]
    pairs, stats = round_pairs(Trees(trees), SPaRConfig(min_shared_words=0.6))
    assert [p["index"] for p in pairs] == [i for i, (_, keep) in enumerate(cases, 1) if keep]
    assert stats["dropped_as_unrelated"] == 2
    assert len(round_pairs(Trees(trees), SPaRConfig())[0]) == 5  # 0 (the default) keeps every pair
    assert shared_words("a a b", "a c") == (1 / 3, 1 / 2)  # repeats count once per occurrence
    assert shared_words("", "a") == (0.0, 0.0) and drop_unrelated([], 0.6) == ([], 0)
    assert parse_config(SPaRConfig, {"min_shared_words": 1.5})[1][0]["loc"] == ["config", "min_shared_words"]
