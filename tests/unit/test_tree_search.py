"""SPaR tree search with scripted refine/judge fakes: a rewrite of "r" is "r|<i>", and a text's
yes-fraction is its last digit / 10, so among siblings the last created ranks first."""
from __future__ import annotations

import pytest

from services.refinement.search import SearchConfig, tree_search

PROMPT = [{"role": "user", "content": "Write two sentences in lowercase."}]
ROOT_JUDGMENT = (False, 0.0, "judged r")


class FakeRefine:
    def __init__(self, branching: int, script: dict | None = None):
        self.branching, self.script, self.calls, self.handed_out = branching, script or {}, [], 0

    def __call__(self, prompt, text, judgment):
        self.calls.append((text, judgment))
        out = list(self.script[text]) if text in self.script else [f"{text}|{i}" for i in range(self.branching)]
        self.handed_out += len(out)
        return out

    @property
    def texts(self):
        return [text for text, _ in self.calls]


class FakeJudge:
    def __init__(self, good=(), undecided=False):
        self.good, self.undecided, self.batches = set(good), undecided, []

    def __call__(self, prompt, texts):
        self.batches.append(list(texts))
        out = []
        for t in texts:
            score = int(t[-1]) / 10 if t[-1].isdigit() else 0.0
            passed = True if t in self.good else (None if self.undecided else False)
            out.append((passed, score, f"judged {t}"))
        return out


def run(good=(), script=None, undecided=False, **cfg):
    config = SearchConfig(**cfg)
    refine, judge = FakeRefine(config.branching, script), FakeJudge(good, undecided)
    result = tree_search(PROMPT, "r", ROOT_JUDGMENT, refine=refine, judge=judge, config=config)
    return result, refine, judge


def test_bfs_solves_at_depth_2_and_stops():
    # Level 1: r|2 (0.2) and r|1 (0.1) are kept, r|0 is not. Both r|2|2 and r|1|2 pass; r|2|2 was
    # created first. Nothing at depth 3 is asked for.
    result, refine, judge = run(good={"r|1|2", "r|2|2"}, strategy="bfs", branching=3, keep=2, max_depth=3)
    assert result.stopped == "solved"
    assert (result.solution.text, result.solution.path, result.solution.depth) == ("r|2|2", "0.2.2", 2)
    assert refine.calls == [("r", "judged r"), ("r|2", "judged r|2"), ("r|1", "judged r|1")]
    assert [len(b) for b in judge.batches] == [3, 6]  # one judge call per level
    assert result.refinements_used == 9 and len(result.nodes) == 10


def test_bfs_first_child_solves_with_one_call_each():
    result, refine, judge = run(good={"r|0"}, branching=3)
    assert (result.stopped, result.solution.path) == ("solved", "0.0")
    assert len(refine.calls) == 1 and len(judge.batches) == 1 and result.refinements_used == 3


@pytest.mark.parametrize("keep,expanded", [
    (1, ["r", "r|2", "r|2|2"]),
    (2, ["r", "r|2", "r|1", "r|2|2", "r|1|2"]),  # tie at 0.2 between r|2|2 and r|1|2: creation order
    (3, ["r", "r|2", "r|1", "r|0", "r|2|2", "r|1|2", "r|0|2"]),
])
def test_bfs_keeps_the_best_per_level(keep, expanded):
    result, refine, _ = run(strategy="bfs", branching=3, keep=keep, max_depth=3, budget=100)
    assert refine.texts == expanded
    assert result.stopped == "depth" and result.solution is None


@pytest.mark.parametrize("strategy,budget,used,stopped", [
    ("bfs", 30, 15, "depth"),   # full search: 3 + 2*3 + 2*3
    ("bfs", 15, 15, "depth"),
    ("bfs", 14, 12, "budget"),  # the last expansion of level 3 does not fit
    ("bfs", 7, 6, "budget"),
    ("bfs", 3, 3, "budget"),
    ("dfs", 30, 21, "depth"),   # 3 + 2*3 + 4*3
    ("dfs", 20, 18, "budget"),
    ("dfs", 5, 3, "budget"),
])
def test_budget_is_never_exceeded(strategy, budget, used, stopped):
    result, refine, _ = run(strategy=strategy, branching=3, keep=2, max_depth=3, budget=budget)
    assert result.refinements_used == used == refine.handed_out <= budget
    assert result.stopped == stopped


@pytest.mark.parametrize("good,stopped", [("r|2|0", "solved"), ("r|1|0", "budget")])
def test_bfs_judges_a_partial_level_when_the_budget_runs_out(good, stopped):
    # budget 7 pays for the root and r|2 only; r|1 (kept too) is never expanded.
    result, refine, judge = run(good={good}, branching=3, keep=2, budget=7)
    assert refine.texts == ["r", "r|2"] and [len(b) for b in judge.batches] == [3, 3]
    assert (result.stopped, result.refinements_used) == (stopped, 6)
    assert (result.solution.text if result.solution else None) == (good if stopped == "solved" else None)


DFS_ORDER = ["r", "r|1", "r|1|1", "r|1|0", "r|0", "r|0|1", "r|0|0"]


def test_dfs_goes_depth_first_best_child_first():
    result, refine, judge = run(strategy="dfs", branching=2, keep=2, max_depth=3)
    assert refine.texts == DFS_ORDER  # depth-3 leaves are never expanded
    assert [len(b) for b in judge.batches] == [2] * 7
    assert (result.stopped, result.solution, result.refinements_used) == ("depth", None, 14)


def test_dfs_backtracks_after_a_branch_hits_max_depth():
    result, refine, _ = run(good={"r|0|0|1"}, strategy="dfs", branching=2, keep=2, max_depth=3)
    assert refine.texts == DFS_ORDER
    assert (result.stopped, result.solution.path, result.solution.depth) == ("solved", "0.0.0.1", 3)


def test_dfs_keep_limits_children_explored():
    _, refine, _ = run(strategy="dfs", branching=3, keep=1, max_depth=3)
    assert refine.texts == ["r", "r|2", "r|2|2"]


@pytest.mark.parametrize("candidates,kept,dropped", [
    ([None, " r ", "a", "a\n", "b"], ["a", "b"], 3),  # unusable, same as parent, same as sibling
    (["", "  ", 42, "c d", "c  d"], ["c d"], 4),       # empty, blank, not text, whitespace-equal
    (["a"], ["a"], 4),                                  # too few: the missing ones count as unusable
    (["a", "b", "c", "d", "e", "f", "g"], list("abcde"), 0),  # too many: extras ignored
])
def test_unusable_and_duplicate_refinements_are_dropped(candidates, kept, dropped):
    result, _, judge = run(script={"r": candidates}, branching=5, max_depth=1)
    assert [n.text for n in result.nodes[1:]] == kept
    assert [n.path for n in result.nodes[1:]] == [f"0.{i}" for i in range(len(kept))]
    assert judge.batches == [kept]
    assert (result.dropped, result.refinements_used, result.stopped) == (dropped, 5, "depth")


@pytest.mark.parametrize("strategy", ["bfs", "dfs"])
def test_no_usable_refinement_is_exhausted(strategy):
    result, _, judge = run(script={"r": [None, "r", " r"]}, strategy=strategy, branching=3)
    assert (result.stopped, result.solution, len(result.nodes), judge.batches) == ("exhausted", None, 1, [])


@pytest.mark.parametrize("strategy", ["bfs", "dfs"])
def test_undecided_verdicts_are_not_solutions(strategy):
    result, _, _ = run(undecided=True, strategy=strategy, branching=2, keep=1, max_depth=2)
    assert (result.stopped, result.solution) == ("depth", None)
    assert all(n.passed is None for n in result.nodes[1:]) and len(result.nodes) == 5


@pytest.mark.parametrize("strategy,keep", [("bfs", 2), ("dfs", 2), ("dfs", 3)])
def test_paths_parents_and_depths_are_consistent(strategy, keep):
    result, refine, _ = run(strategy=strategy, branching=3, keep=keep, max_depth=3, budget=100)
    by_path = {}
    for node in result.nodes:
        assert node.path not in by_path
        assert node.depth == node.path.count(".")
        if node.parent_path is None:
            assert (node.path, node.text, node.judgment) == ("0", "r", "judged r")
        else:
            parent = by_path[node.parent_path]  # parents come before their children
            assert node.path.rsplit(".", 1)[0] == parent.path and node.depth == parent.depth + 1
            assert node.text.rsplit("|", 1)[0] == parent.text
            assert node.judgment == f"judged {node.text}"
        by_path[node.path] = node
    assert len(result.nodes) == 1 + 3 * len(refine.calls)


@pytest.mark.parametrize("kwargs,field", [
    ({"strategy": "mcts"}, "strategy"),
    ({"branching": 0}, "branching"),
    ({"keep": 0}, "keep"),
    ({"max_depth": 0}, "max_depth"),
    ({"max_depth": 2.5}, "max_depth"),
    ({"budget": 2, "branching": 3}, "budget"),
])
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SearchConfig(**kwargs)


def test_paper_defaults():
    assert SearchConfig() == SearchConfig(strategy="bfs", branching=3, keep=2, max_depth=3, budget=30)


def test_root_that_passed_is_refused_and_bad_judge_length_is_an_error():
    config = SearchConfig()
    with pytest.raises(ValueError, match="already passed"):
        tree_search(PROMPT, "r", (True, 1.0, ""), refine=FakeRefine(3), judge=FakeJudge(), config=config)
    with pytest.raises(ValueError, match="one .* per text"):
        tree_search(PROMPT, "r", ROOT_JUDGMENT, refine=FakeRefine(3), judge=lambda p, t: [], config=config)


def test_malformed_judge_entries_read_as_undecided():
    result = tree_search(PROMPT, "r", ROOT_JUDGMENT, refine=FakeRefine(2),
                         judge=lambda p, texts: ["garbage", (1, None, None)][: len(texts)],
                         config=SearchConfig(branching=2, max_depth=1))
    assert [(n.passed, n.score, n.judgment) for n in result.nodes[1:]] == [(None, 0.0, ""), (None, 0.0, "")]
    assert result.stopped == "depth"


def test_first_solved_and_its_path_to_the_root():
    from services.refinement.search import first_solved, solution_path

    nodes = [{"id": 10, "path": "0", "parent_path": None, "depth": 0, "passed": False, "text": "root"},
             {"id": 11, "path": "0.0", "parent_path": "0", "depth": 1, "passed": False, "text": "a"},
             {"id": 13, "path": "0.0.1", "parent_path": "0.0", "depth": 2, "passed": True, "text": "b"},
             {"id": 12, "path": "0.0.0", "parent_path": "0.0", "depth": 2, "passed": True, "text": "c"}]
    assert first_solved(nodes)["text"] == "c"  # the earliest created passing node, not the first listed
    assert [(p["text"], c["text"]) for p, c in solution_path(nodes)] == [("a", "c"), ("root", "a")]
    unsolved = [dict(n, passed=False) for n in nodes]
    assert first_solved(unsolved) is None and solution_path(unsolved) == []
    assert first_solved([dict(nodes[0], passed=True)]) is None  # the root itself never counts


@pytest.mark.parametrize("strategy", ["bfs", "dfs"])
def test_searches_in_lockstep_take_the_paths_they_take_alone_with_one_model_call_per_step(strategy):
    from services.refinement.search import tree_searches

    # three roots: one solved at depth 1, one at depth 2, one never (runs to its depth limit)
    good = {"a|1", "b|0|1"}
    cfg = dict(strategy=strategy, branching=2, keep=1, max_depth=3, budget=20)
    alone = []
    for root in ("a", "b", "c"):
        config = SearchConfig(**cfg)
        result = tree_search(PROMPT, root, ROOT_JUDGMENT, refine=FakeRefine(2), judge=FakeJudge(good), config=config)
        alone.append(result)

    refine, judge = FakeRefine(2), FakeJudge(good)
    batches = {"refine": [], "judge": []}

    def refine_many(requests):
        batches["refine"].append(len(requests))
        return [refine(prompt, text, judgment) for prompt, text, judgment in requests]

    def judge_many(requests):
        batches["judge"].append(len(requests))
        return [judge(prompt, texts) for prompt, texts in requests]

    jobs = [(PROMPT, root, ROOT_JUDGMENT) for root in ("a", "b", "c")]
    together = tree_searches(jobs, refine_many=refine_many, judge_many=judge_many, config=SearchConfig(**cfg))
    assert [(r.stopped, r.solution and r.solution.path, [n.text for n in r.nodes]) for r in together] == \
        [(r.stopped, r.solution and r.solution.path, [n.text for n in r.nodes]) for r in alone]
    # every step batches the requests of the searches still running: 3 at the first, fewer as they end
    assert batches["refine"][0] == 3 and batches["judge"][0] == 3
    assert sum(batches["refine"]) == sum(r.refinements_used // 2 for r in alone)  # one request per expansion
    assert len(batches["refine"]) == max(r.refinements_used // 2 for r in alone)


def test_lockstep_searches_check_each_root_and_the_answer_counts():
    from services.refinement.search import tree_searches

    config = SearchConfig(branching=2)
    with pytest.raises(ValueError, match="already passed"):
        tree_searches([(PROMPT, "r", (True, 1.0, "ok"))], refine_many=lambda r: [], judge_many=lambda r: [],
                      config=config)
    with pytest.raises(ValueError, match="refine_many returned 0 answers for 2 requests"):
        tree_searches([(PROMPT, "r", ROOT_JUDGMENT)] * 2, refine_many=lambda r: [], judge_many=lambda r: [],
                      config=config)
    assert tree_searches([], refine_many=lambda r: [], judge_many=lambda r: [], config=config) == []
