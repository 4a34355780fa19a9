"""SPaR's tree search over refinements (Cheng et al., 2024, arXiv 2412.11605, section 3.2).

The root is a response the refiner judged as failing. Each expansion asks the refiner for
`branching` rewrites of a node given its judgment; the rewrites are judged (majority of sampled
verdicts, done by the caller's `judge`) and the search stops at the first one judged correct,
which becomes `chosen` against the root as `rejected`. Breadth-first keeps a beam of the `keep`
best nodes per level; depth-first follows the best child down and backtracks.

The search is pure: it is written as a generator that yields its model requests ("refine" a node,
"judge" some texts) and receives the answers, so the same code runs one search with two callables
(`tree_search`) or many searches in lockstep (`tree_searches`), where each step's requests of all
searches go to the model as one batch: a search alone asks for `branching` rewrites at a time,
which leaves a batched generator mostly idle. It does not build prompts, parse model text or store
anything.

Where it departs from the paper:
- A budget caps the refinement candidates generated in total (the paper only bounds depth and
  branching). An expansion costs `branching` candidates whatever comes back, and is only started
  when the whole cost fits, so `refinements_used` never exceeds `budget`.
- Siblings are ranked by the fraction of 'yes' votes (ties: earlier created first). The paper
  keeps the better children by the refiner's judgment without saying how to rank failures; the
  yes-fraction is what the majority vote already gives us.
- Breadth-first judges all children of a level in one `judge` call (one batched model run) before
  looking for a solution, so the refinements of a level are all generated even when the first
  would have passed; among the passing children of the level the earliest created wins.
- Rewrites that are empty, unusable (None) or equal to the parent or to an earlier sibling after
  whitespace normalisation are dropped and counted (`dropped`): an edit that changes nothing is
  no refinement. Undecided verdicts (an even vote) never count as solved but may be expanded.
- Child paths number the kept children of a node from 0 in creation order: "0" is the root,
  "0.0" its first kept child, "0.0.1" the second kept child of that one.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

STRATEGIES = ("bfs", "dfs")

# refine(prompt_messages, text, judgment) -> `branching` rewrites (None = unusable output)
Refine = Callable[[list[dict], str, str], list]
# judge(prompt_messages, texts) -> per text (majority verdict, yes-fraction, a judgment text)
Judge = Callable[[list[dict], list[str]], list]
# The batched forms for tree_searches: one call answers the requests of many searches, in order.
# refine_many([(prompt_messages, text, judgment)]) -> per request its `branching` rewrites
RefineMany = Callable[[list[tuple[list[dict], str, str]]], list]
# judge_many([(prompt_messages, texts)]) -> per request its verdicts, one per text
JudgeMany = Callable[[list[tuple[list[dict], list[str]]]], list]


@dataclass
class SearchConfig:
    strategy: str = "bfs"  # bfs | dfs
    branching: int = 3  # refinements asked per expanded node [paper: 3]
    keep: int = 2  # BFS: beam width per level; DFS: children explored per node [paper: 2]
    max_depth: int = 3  # root is depth 0 [paper: 3]
    budget: int = 30  # refinement candidates generated in total (ours, not in the paper)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        for name in ("branching", "keep", "max_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.budget, int) or isinstance(self.budget, bool) or self.budget < self.branching:
            raise ValueError(f"budget must be an integer >= branching ({self.branching}) so that at least "
                             f"one expansion fits, got {self.budget!r}")


@dataclass
class Node:
    path: str  # "0" root, "0.1", "0.1.2" ...
    parent_path: str | None
    depth: int  # root 0
    text: str
    passed: bool | None  # majority verdict; None = undecided
    score: float  # fraction of 'yes' votes, ranks siblings
    judgment: str  # the judge text used to refine this node


@dataclass
class SearchResult:
    nodes: list[Node]  # every node kept, root first, in creation order
    solution: Node | None  # first node judged correct, else None
    refinements_used: int
    stopped: str  # solved | budget | depth | exhausted
    dropped: int = 0  # candidates that were None, empty or duplicates (included in refinements_used)


def normalise(text: str) -> str:
    """Whitespace-insensitive form of a text: rewrites (and SPaR's failed answers) that differ only
    in spacing count as the same."""
    return " ".join(text.split())


def _clean_verdict(entry) -> tuple[bool | None, float, str]:
    """A judge entry as (passed, score, judgment); anything malformed reads as undecided."""
    try:
        passed, score, judgment = entry
    except (TypeError, ValueError):
        log.warning("unreadable judge entry %r: treated as undecided", entry)
        return None, 0.0, ""
    passed = passed if passed is True or passed is False else None
    try:
        score = float(score)
    except (TypeError, ValueError):
        score = 0.0
    if not math.isfinite(score):
        score = 0.0
    return passed, score, judgment if isinstance(judgment, str) else ""


class _Search:
    """The state shared by both strategies: the tree so far and the budget spent. Its methods are
    generators: a model request is yielded as ("refine", text, judgment) or ("judge", texts) and
    the answer comes back through send()."""

    def __init__(self, config):
        self.config = config
        self.nodes: list[Node] = []
        self.used = 0
        self.dropped = 0
        self.hit_depth = False

    def affordable(self) -> bool:
        return self.used + self.config.branching <= self.config.budget

    def expand(self, parent: Node) -> list[Node]:
        """Ask for `branching` rewrites of `parent`; returns the usable ones as unjudged nodes."""
        n = self.config.branching
        raw = list((yield ("refine", parent.text, parent.judgment)) or [])
        if len(raw) != n:
            log.warning("refine returned %d candidates for %s, asked %d", len(raw), parent.path, n)
        raw = (raw + [None] * n)[:n]  # missing candidates count as unusable, extras are ignored
        self.used += n
        seen = {normalise(parent.text)}
        children: list[Node] = []
        for text in raw:
            key = normalise(text) if isinstance(text, str) else ""
            if not key or key in seen:
                self.dropped += 1
                continue
            seen.add(key)
            children.append(Node(path=f"{parent.path}.{len(children)}", parent_path=parent.path,
                                 depth=parent.depth + 1, text=text, passed=None, score=0.0, judgment=""))
        self.nodes.extend(children)
        return children

    def judge_all(self, children: list[Node]) -> Node | None:
        """Judge `children` in one call; returns the earliest created that passed."""
        if not children:
            return None
        verdicts = list((yield ("judge", [c.text for c in children])) or [])
        if len(verdicts) != len(children):
            raise ValueError(f"judge returned {len(verdicts)} verdicts for {len(children)} texts; "
                             "it must return one (passed, score, judgment) per text, in order")
        for child, entry in zip(children, verdicts):
            child.passed, child.score, child.judgment = _clean_verdict(entry)
        return next((c for c in children if c.passed is True), None)

    def ranked(self, nodes: list[Node]) -> list[Node]:
        """The `keep` best by yes-fraction; sorted() is stable, so ties keep creation order."""
        return sorted(nodes, key=lambda node: -node.score)[: self.config.keep]

    def bfs(self, root: Node) -> tuple[Node | None, str]:
        frontier = [root]
        for depth in range(1, self.config.max_depth + 1):
            level: list[Node] = []
            out_of_budget = False
            for parent in frontier:
                if not self.affordable():
                    out_of_budget = True
                    break
                level.extend((yield from self.expand(parent)))
            solved = yield from self.judge_all(level)  # what was paid for is judged even if the budget ran out
            if solved is not None:
                return solved, "solved"
            if out_of_budget:
                return None, "budget"
            if not level:
                return None, "exhausted"
            frontier = self.ranked(level)
        return None, "depth"

    def dfs(self, node: Node) -> tuple[Node | None, str | None]:
        """Returns (solution, reason) to stop the whole search, or (None, None) to backtrack."""
        if node.depth >= self.config.max_depth:
            self.hit_depth = True
            return None, None
        if not self.affordable():
            return None, "budget"
        children = yield from self.expand(node)
        solved = yield from self.judge_all(children)
        if solved is not None:
            return solved, "solved"
        for child in self.ranked(children):
            found, reason = yield from self.dfs(child)
            if reason is not None:
                return found, reason
        return None, None


def search_steps(root_text: str, root_judgment: tuple[bool | None, float, str], config: SearchConfig):
    """The search of one failed response as a generator of model requests (see _Search); its
    return value (StopIteration.value) is the SearchResult. Checks the root before the first step."""
    passed, score, judgment = _clean_verdict(root_judgment)
    if passed is True:
        raise ValueError("root_judgment says the root already passed; tree search refines failed "
                         "(or undecided) responses only")
    root = Node(path="0", parent_path=None, depth=0, text=root_text, passed=passed, score=score, judgment=judgment)
    return _steps(_Search(config), root)


def _steps(search: _Search, root: Node):
    config = search.config
    search.nodes.append(root)
    if config.strategy == "bfs":
        solution, stopped = yield from search.bfs(root)
    else:
        solution, stopped = yield from search.dfs(root)
        stopped = stopped or ("depth" if search.hit_depth else "exhausted")
    log.info("tree search (%s): %s after %d refinements, %d nodes, %d dropped", config.strategy, stopped,
             search.used, len(search.nodes), search.dropped)
    return SearchResult(nodes=search.nodes, solution=solution, refinements_used=search.used,
                        stopped=stopped, dropped=search.dropped)


def tree_search(prompt_messages: list[dict], root_text: str, root_judgment: tuple[bool | None, float, str],
                *, refine: Refine, judge: Judge, config: SearchConfig) -> SearchResult:
    """Refine the failed `root_text` until a rewrite is judged correct, the budget is spent, the
    depth limit is reached or no usable rewrite is left (see the module docstring)."""
    steps = search_steps(root_text, root_judgment, config)
    reply = None
    while True:
        try:
            request = steps.send(reply)
        except StopIteration as done:
            return done.value
        reply = refine(prompt_messages, *request[1:]) if request[0] == "refine" else judge(prompt_messages, request[1])


def tree_searches(jobs: list[tuple[list[dict], str, tuple[bool | None, float, str]]], *, refine_many: RefineMany,
                  judge_many: JudgeMany, config: SearchConfig) -> list[SearchResult]:
    """Many searches in lockstep: jobs are (prompt_messages, root_text, root_judgment). At each step
    every unfinished search has one request pending; all refine requests go to `refine_many` in one
    call and all judge requests to `judge_many` in another, and each search gets its own answer back.
    Each search takes the same path as tree_search would with the same answers."""
    live = {i: search_steps(text, verdict, config) for i, (_, text, verdict) in enumerate(jobs)}
    pending = {}  # search index -> its open request
    results: list[SearchResult | None] = [None] * len(jobs)

    def advance(i: int, reply) -> None:
        try:
            pending[i] = live[i].send(reply)
        except StopIteration as done:
            results[i] = done.value
            del live[i]
            pending.pop(i, None)

    for i in list(live):
        advance(i, None)
    while pending:
        refines = [i for i, r in pending.items() if r[0] == "refine"]
        judges = [i for i, r in pending.items() if r[0] == "judge"]
        replies = {}
        if refines:
            out = list(refine_many([(jobs[i][0], *pending[i][1:]) for i in refines]))
            if len(out) != len(refines):
                raise ValueError(f"refine_many returned {len(out)} answers for {len(refines)} requests")
            replies.update(zip(refines, out))
        if judges:
            out = list(judge_many([(jobs[i][0], pending[i][1]) for i in judges]))
            if len(out) != len(judges):
                raise ValueError(f"judge_many returned {len(out)} answers for {len(judges)} requests")
            replies.update(zip(judges, out))
        for i, reply in replies.items():
            advance(i, reply)
    return results


def first_solved(nodes: list[dict]) -> dict | None:
    """The stored tree's solution: its earliest created (lowest id) refined node that passed.
    nodes: [{"id", "depth", "passed", ...}] as stored (RefinementNode rows)."""
    return min((n for n in nodes if n["passed"] is True and n["depth"] > 0), key=lambda n: n["id"], default=None)


def solution_path(nodes: list[dict]) -> list[tuple[dict, dict]]:
    """(parent, child) steps from the solution up to the root, solution's step first; [] when
    the tree has no solution."""
    by_path = {n["path"]: n for n in nodes}
    node, steps = first_solved(nodes), []
    while node is not None and node.get("parent_path") is not None:
        parent = by_path[node["parent_path"]]
        steps.append((parent, node))
        node = parent
    return steps
