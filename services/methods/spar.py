"""SPaR (Cheng et al., 2024, arXiv 2412.11605): self-play with tree-search refinement.

Two roles from one base: the actor answers, the refiner judges and refines. Round t: the actor
samples K responses per prompt; the refiner judges each (a step-by-step check of every instruction
ending in a yes/no verdict, several votes, majority; an even split is undecided and skipped); each
failed response gets a tree search over refinements (one refinement task per shard of failed
responses, on the `refinement` queue, its searches run in lockstep so that each step's rewrites are
one batched generation call); pairs are (refined, original) — the same response before and after the
edit, so the pair differs only where it matters; the actor trains with DPO plus an SFT term on the
chosen side; the refiner trains (SFT) on its own judgments that agreed with its majority and on the
refinement steps along successful search paths.

The refiner must be able to judge before its votes mean anything. The paper first fine-tunes it on
judgments and refinements written by GPT-4o; here round 1 does the same with data the verifier
writes (`bootstrap_judge`, JudgeFields in base.py): after the actor's samples, the refiner is
trained from θ0 on verifier-labelled judgments of those samples (yes/no balanced) and on minimal
programmatic fixes of the failing ones, and every round measures its judge on a probe of training
prompts before trusting it (`judge_check`), falling back to the verifier or stopping below the floor.
Refiner training also uses the judgments made inside the tree search (each node's verdict text that
agrees with its majority), not only the roots'.

Departures: the paper also trains the refiner's judgments with DPO; we use SFT only. LoRA learning
rates are 10x the paper's full-fine-tuning rates (an adapter moves fewer weights; the training
guards of TrainConfig stop a round that drifts too far anyway).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from services.methods.base import (
    JudgeFields, PlanInput, Recipe, SamplingFields, Stage, TrainerFields, balance_lengths, check, drop_continuations,
    evaluation_stages, judge_bootstrap_items, judge_check_plan, judge_data_errors, pair_length_counts, register,
    shard_prompts, shards, single, sound_answer, trainer_config,
)
from services.methods.jobs import pairwise_job
from services.training.job import TrainJob
from shared.models import FINISH_AT_LIMIT


@dataclass
class SPaRConfig(JudgeFields, SamplingFields, TrainerFields):
    samples_per_prompt: int = 5  # K [5]
    temperature: float = 0.9  # [0.9]
    top_p: float = 1.0
    max_new_tokens: int = 256
    judge_votes: int = 5  # [5]
    judge_temperature: float = 0.7  # [0.7]
    judge_max_new_tokens: int = 256
    search: str = "bfs"  # bfs | dfs
    branching: int = 3  # [3]
    keep: int = 2  # [2]
    max_depth: int = 3  # [3]
    search_budget: int = 15  # refinements per failed response
    refine_temperature: float = 0.7
    # "self": the refiner writes every refinement (the paper). "hybrid": for prompts with
    # constraints, a failed answer whose broken instructions all have a mechanical fix gets that
    # verified minimal edit (services/curriculum/refinements.py) instead of the refiner's rewrites,
    # as judge "hybrid" lets the verifier judge them; an answer cut at the token limit is never fixed
    # itself (only the refiner's ended rewrite of it), nor one unsound beyond its broken instructions
    # (degeneration.editable), and the refiner refines the rest (ours, not the paper's).
    refine_mode: str = "self"
    # At most this share of the pairs whose sides differ in word count on one side (chosen longer or
    # rejected longer), the widest gaps dropped first (base.balance_lengths, as in Self-Rewarding).
    # Fixes that add material after a finished answer make the chosen side the longer one, and DPO on
    # such pairs taught the model not to end (docs/results.md). 1.0 keeps every pair (the paper).
    length_balance: float = 1.0
    # Drop the pairs whose refined answer writes the failed one's ending and goes on: text appended
    # after its end, or a wrap around it (base.drop_continuations). Their one contrast at the end is
    # "end here" against "go on", which taught loops when fixes appended the end phrase or a
    # postscript, and taught a closing quote as an ending when fixes wrapped answers in quotes. A
    # failed answer cut at the limit has no end to lower, so its continuations stay. False keeps
    # them all (the paper). Applied before length_balance.
    drop_continuations: bool = False
    # A refinement edits the failed answer (the method's point: a pair free of unrelated
    # differences). Drop a pair when its refined answer neither takes this share of its words from
    # the failed answer nor keeps this share of the failed answer's words (`shared_words`): a new
    # text, such as a refiner's rewrite that restates its own instructions or is a stray tag. An edit
    # that adds or cuts a lot still passes one of the two. 0 keeps every pair (the paper).
    min_shared_words: float = 0.0
    max_failed_per_round: int = 256  # cap on tree searches per round (cost control)
    beta: float = 0.1  # [0.1]
    sft_weight: float = 0.1  # [0.1]
    learning_rate: float = 1e-5  # LoRA: 10x a full fine-tuning rate of 1e-6
    # The actor's rate from round `later_from_round` on (SPIN's pattern); None keeps learning_rate in
    # every round (the paper). Each round's DPO starts from the last round's policy, so a shift in
    # how answers end adds up over rounds (docs/results.md: SPaR-hybrid's cut answers 15 → 30 % by
    # round 3); a smaller later step is the lever against that drift (ours, not yet measured).
    later_learning_rate: float | None = None
    later_from_round: int = 2
    refiner_learning_rate: float = 1e-5
    train_refiner: bool = True

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        self.check_sampling_fields()
        self.check_judge_fields()
        check(1 <= self.judge_votes <= 16, "judge_votes", "must be in 1..16")
        check(self.judge_temperature > 0 and self.refine_temperature > 0, "judge_temperature",
              "judge_temperature and refine_temperature must be > 0")
        check(self.search in ("bfs", "dfs"), "search", "must be 'bfs' or 'dfs'")
        check(self.refine_mode in ("self", "hybrid"), "refine_mode", "must be 'self' or 'hybrid'")
        check(0.5 <= self.length_balance <= 1, "length_balance", "must be in [0.5, 1] (1 keeps every pair)")
        check(self.branching >= 1 and self.keep >= 1, "branching", "branching and keep must be >= 1")
        check(1 <= self.max_depth <= 10, "max_depth", "must be in 1..10")
        check(self.search_budget >= 1, "search_budget", "must be >= 1")
        check(self.max_failed_per_round >= 1, "max_failed_per_round", "must be >= 1")
        check(0 <= self.min_shared_words <= 1, "min_shared_words", "must be in [0, 1] (0 keeps every pair)")
        check(self.beta > 0, "beta", "must be > 0")
        check(self.sft_weight >= 0, "sft_weight", "must be >= 0")
        check(self.learning_rate > 0 and self.refiner_learning_rate > 0, "learning_rate", "must be > 0")
        check(self.later_learning_rate is None or self.later_learning_rate > 0, "later_learning_rate",
              "must be > 0, or null to keep learning_rate in every round")
        check(self.later_from_round >= 2, "later_from_round", "must be >= 2 (round 1 uses learning_rate)")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import round_learning_rate, trainer_config

        return trainer_config(self, loss="sigmoid", beta=self.beta, sft_weight=self.sft_weight,
                              learning_rate=round_learning_rate(self, round_number))

    def refiner_config(self):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.refiner_learning_rate)

    def judge_bootstrap_config(self):
        return trainer_config(self, loss="sft", learning_rate=self.bootstrap_judge_learning_rate,
                              epochs=self.bootstrap_judge_epochs)

    def search_config(self):
        from services.refinement.search import SearchConfig

        return SearchConfig(strategy=self.search, branching=self.branching, keep=self.keep,
                            max_depth=self.max_depth, budget=self.search_budget)


def refined_pairs(trees: list[dict]) -> list[dict]:
    """(refined, original) pairs: one per search tree that found a correct refinement.

    trees: [{"prompt_id", "sample_index", "root": text, "solution": text | None}].
    """
    return [{"prompt_id": t["prompt_id"], "index": t["sample_index"], "source": "refined_vs_original",
             "chosen": t["solution"], "rejected": t["root"]}
            for t in trees if t.get("solution") and t["solution"].strip() != t["root"].strip()]


# ---------------------------------------------------------------- hooks
REFINER = "role:refiner"  # the refiner's newest version (services/generation/versions.py), else the base


def _failed(judgments: list[dict]) -> list[int]:
    """Samples whose refiner majority verdict is 'no', in id order."""
    from services.judging.votes import majorities

    return sorted(sid for sid, v in majorities(judgments).items() if v is False)


def pick_failed(failed_ids: list[int], samples: list[dict], cap: int, seed: int) -> list[int]:
    """Which failed responses get a tree search when there are more than `cap`: identical answers
    to the same prompt are searched once (their searches and pairs would repeat each other and
    weigh that prompt double), and the cap is shared round-robin over the prompts, in an order
    shuffled by `seed`, so the first prompts' K failures do not take the whole budget. Answers that
    ended come first; answers cut at the token limit only fill what the cap leaves: a rewrite of a
    cut answer (often a loop or a junk tail) was rarely usable in the measured runs (SPaR's round 1
    at 200 prompts: 60-66 of 96 searched answers were cut, and 27 of all 288 rewrites were usable,
    docs/results.md), so cut answers took most of the search budget for few pairs.

    samples: the round's policy samples ({"id", "prompt_id", "text"[, "finish_reason"]}). Returns sample ids."""
    import random

    from services.refinement.search import normalise

    by_id = {x["id"]: x for x in samples}
    ended: dict[int, list[int]] = {}
    cut: dict[int, list[int]] = {}
    seen: set[tuple[int, str]] = set()
    for sid in sorted(failed_ids):
        x = by_id.get(sid)
        if x is None:
            continue
        key = (x["prompt_id"], normalise(x["text"]))
        if key in seen:
            continue
        seen.add(key)
        (cut if x.get("finish_reason") == FINISH_AT_LIMIT else ended).setdefault(x["prompt_id"], []).append(sid)
    order = sorted(ended.keys() | cut.keys())
    random.Random(seed).shuffle(order)
    picked: list[int] = []
    for per_prompt in (ended, cut):
        depth = 0
        while len(picked) < cap and any(len(per_prompt.get(p, ())) > depth for p in order):
            picked += [per_prompt[p][depth] for p in order if len(per_prompt.get(p, ())) > depth][:cap - len(picked)]
            depth += 1
    return picked


def _verifier_judged(cfg: "SPaRConfig", data) -> Callable[[dict], bool]:
    """Whether this round's judgments of a prompt's responses were written by the verifier (judge
    verifier or hybrid, or a failed judge check, on a prompt with constraints) rather than the refiner."""
    from services.judging.verifier_judge import verifier_decides

    mode = cfg.judge_mode(data)
    return lambda prompt: verifier_decides(mode, prompt["constraints"])


def _model_judges(cfg: "SPaRConfig", data) -> bool:
    """Whether the refiner judges anything in this run: with judge hybrid and every training prompt
    carrying constraints, the verifier decides every verdict, so a judge check (and teaching the
    refiner verdicts) would cost model calls whose results nobody uses."""
    if cfg.judge == "verifier":
        return False
    return cfg.judge != "hybrid" or any(not p["constraints"] for p in data.run_prompts())


def round_pairs(data, cfg: SPaRConfig) -> tuple[list[dict], dict]:
    from services.refinement.search import first_solved

    trees = []
    for t in data.refinement_trees():
        solved = first_solved(t["nodes"])
        trees.append({**t, "solution": solved["text"] if solved else None})
    stats = {"searched": len(trees), "solved": sum(t["solution"] is not None for t in trees)}
    prompts = data.prompts(sorted({t["prompt_id"] for t in trees}))
    if cfg.refine_mode == "hybrid":
        stats["solved_by_fix"] = _solved_by_fix(prompts, trees)
    pairs = refined_pairs(trees)
    pairs, unsound = drop_unsound(pairs, prompts, _verifier_judged(cfg, data))
    stats["dropped_as_unsound"] = unsound
    pairs, unrelated = drop_unrelated(pairs, cfg.min_shared_words)
    stats["dropped_as_unrelated"] = unrelated
    if cfg.drop_continuations:
        pairs, dropped = drop_continuations(
            pairs, cut={(t["prompt_id"], t["sample_index"]) for t in trees if t.get("root_cut")})
        stats.update(dropped)
    pairs, dropped = balance_lengths(pairs, cfg.length_balance)
    return pairs, {**stats, "pairs": len(pairs), **dropped, **pair_length_counts(pairs)}


def drop_unsound(pairs: list[dict], prompts: dict[int, dict], verifier_judged: Callable[[dict], bool]
                 ) -> tuple[list[dict], int]:
    """The pairs whose chosen answer is sound (`sound_answer`; for a prompt with constraints, which
    the verifier needs, `editable`: no echo, runaway repetition, junk, leaked chat turn or restated
    prompt), where the verifier judged the prompt, and how many were dropped. The verifier checks
    only the prompt's instructions, so a refinement that keeps a leaked turn but fixes the case
    passes it; a model judge reads the whole answer and is left to decide."""
    kept = [p for p in pairs if not verifier_judged(prompts[p["prompt_id"]])
            or sound_answer(p["chosen"], prompts[p["prompt_id"]])]
    return kept, len(pairs) - len(kept)


def shared_words(refined: str, original: str) -> tuple[float, float]:
    """(share of the refined answer's words that the original has, share of the original's words
    the refined answer keeps), words counted with their repeats, case ignored."""
    from collections import Counter

    from services.judging.degeneration import words

    r, o = Counter(words(refined)), Counter(words(original))
    common = sum((r & o).values())
    return (common / r.total() if r else 0.0), (common / o.total() if o else 0.0)


def drop_unrelated(pairs: list[dict], floor: float) -> tuple[list[dict], int]:
    """The pairs whose chosen answer is an edit of the rejected one (either share of `shared_words`
    at least `floor`), and how many were dropped. Measured on SPaR-hybrid's round 1 (62 pairs): the
    5 pairs below 0.6 on both sides were all the refiner's rewrites (a restatement of its own
    prompt, a bare "<reply>" tag, markup around new sentences); the other 57 had one share at 1.0."""
    if floor <= 0:
        return pairs, 0
    kept = [p for p in pairs if max(shared_words(p["chosen"], p["rejected"])) >= floor]
    return kept, len(pairs) - len(kept)


def _solved_by_fix(prompts: dict[int, dict], trees: list[dict]) -> int:
    """How many solutions are a mechanical fix (refine_mode hybrid) rather than a refiner's rewrite:
    the solution's last step is the fix of its parent, at any depth, unless that parent is a root
    cut at the limit (which hybrid never fixes, so the refiner wrote it). Under hybrid a parent that
    `mechanical_fix` fixes is never handed to the refiner, so equality with that fix tells the two
    apart (the same function, so a parent it refuses as unsound counts as the refiner's)."""
    from services.refinement.fixes import mechanical_fix
    from services.refinement.search import solution_path

    n = 0
    for t in trees:
        steps = solution_path(t["nodes"])
        if not steps:
            continue
        parent, node = steps[0]
        # the prompt as the search saw it: the cut root (any depth's copy of it) is never fixed
        seen = {**prompts[t["prompt_id"]], "cut_root": t["root"] if t.get("root_cut") else None}
        n += node["text"] == mechanical_fix(seen, parent["text"])
    return n


def refiner_job(data, cfg: SPaRConfig) -> TrainJob:
    """The refiner learns from its own traces: judgments that agree with its majority verdict, and
    each refinement step on a path that ended in a correct node."""
    from services.judging.refiner import REFINED_MARK, judge_messages, parse_verdict, refine_messages
    from services.judging.votes import majorities
    from services.refinement.search import solution_path

    samples = {x["id"]: x for x in data.samples("policy")}
    prompts = data.prompts(sorted({x["prompt_id"] for x in samples.values()}))
    # Only the refiner's own judgments teach it to judge: where the verifier wrote them (hybrid, or
    # after a failed judge check) they are neither its traces nor balanced yes/no, and on a run
    # without judge prompt sets they would cover the very prompts the next judge check probes.
    by_verifier = _verifier_judged(cfg, data)
    judgments = data.judgments("refiner", role="policy")
    majority = majorities(judgments)
    items = []
    for j in judgments:
        if j["passed"] is not None and j["passed"] == majority.get(j["sample_id"]) and j["rationale"]:
            x = samples[j["sample_id"]]
            if by_verifier(prompts[x["prompt_id"]]):
                continue
            items.append({"messages": judge_messages(prompts[x["prompt_id"]]["messages"], x["text"]),
                          "response": j["rationale"]})
    for tree in data.refinement_trees():  # the verdicts made inside the search, where they agree with
        if tree["sample_id"] not in samples or by_verifier(prompts[tree["prompt_id"]]):  # the node's majority
            continue
        messages = prompts[tree["prompt_id"]]["messages"]
        for node in tree["nodes"]:
            if node["depth"] > 0 and node["judgment"] and node["passed"] is not None \
                    and parse_verdict(node["judgment"]) == node["passed"]:
                items.append({"messages": judge_messages(messages, node["text"]), "response": node["judgment"]})
    n_judgments = len(items)
    for tree in data.refinement_trees():
        if tree["sample_id"] not in samples:
            continue
        messages = prompts[tree["prompt_id"]]["messages"]
        for parent, node in solution_path(tree["nodes"]):
            items.append({"messages": refine_messages(messages, parent["text"], parent["judgment"] or ""),
                          "response": f"{REFINED_MARK}\n{node['text']}"})
    previous = data.latest_version("refiner")
    return TrainJob(kind="sft", items=items, tcfg=cfg.refiner_config(), key_round=data.round_number, role="refiner",
                    init_adapter=previous["adapter"], parent_id=previous["version_id"],
                    stats={"judgment_examples": n_judgments, "refinement_examples": len(items) - n_judgments})


def judge_bootstrap_job(data, cfg: SPaRConfig) -> TrainJob:
    """Round 1: the refiner (version round 0) from θ0, on verifier-written judgments of the actor's
    samples and on programmatic fixes of the failing ones."""
    judges = _model_judges(cfg, data)  # if not, no judge check ever runs: no prompt is kept for its probe
    kinds = ("refiner", "refinement") if judges else ("refinement",)
    items, stats = judge_bootstrap_items(data, cfg, kinds, ("policy", "bootstrap"), probe=judges)
    return TrainJob(kind="sft", items=items, tcfg=cfg.judge_bootstrap_config(), key_round=0, role="refiner",
                    parent_id=data.base_version_id, stats=stats, label="bootstrap_judge")


def training_job(data, cfg: SPaRConfig, role: str):
    if role == "judge_bootstrap":
        return judge_bootstrap_job(data, cfg)
    if role == "refiner":
        return refiner_job(data, cfg)
    return pairwise_job(data, cfg) if role == "policy" else None


# ---------------------------------------------------------------- stages
def _judge_model(cfg: SPaRConfig) -> str:
    return REFINER if cfg.judge_version_id is None else f"version:{cfg.judge_version_id}"


def _judge_plan(inp: PlanInput) -> list[dict]:
    cfg = inp.config
    return shards(inp.prompt_ids, inp.shard_size, role="policy", model=_judge_model(cfg), votes=cfg.judge_votes,
                  temperature=cfg.judge_temperature, max_new_tokens=cfg.judge_max_new_tokens,
                  judge=cfg.judge_mode(inp.data))


def _wants_bootstrap(inp: PlanInput) -> bool:
    cfg = inp.config
    return inp.round_number == 1 and cfg.bootstraps_judge


def _judge_bootstrap_plan(inp: PlanInput) -> list[dict]:
    return [{"role": "judge_bootstrap"}] if _wants_bootstrap(inp) and _bootstrap_prompts(inp) else []


def _bootstrap_prompts(inp: PlanInput) -> list[int]:
    """The constrained prompts that teach the refiner; all of them when it never judges (no probe)."""
    return inp.config.constrained_split(inp.data, _model_judges(inp.config, inp.data))[0]


def _bootstrap_samples_plan(inp: PlanInput) -> list[dict]:
    """Round 1: the actor's answers to the bootstrap prompts of `judge_prompt_set_ids` (the run's
    own prompts already have the round's samples), role "bootstrap": they teach only the refiner."""
    if not _wants_bootstrap(inp) or not inp.config.judge_prompt_set_ids:
        return []
    own = set(inp.prompt_ids)
    extra = [i for i in _bootstrap_prompts(inp) if i not in own]
    return shards(extra, inp.shard_size, role="bootstrap", n=inp.config.samples_per_prompt)


# A refinement starts with its "Refined response:" line and may add what the answer lacked, so the
# refiner gets this many tokens beyond the actor's own limit; a refinement that still runs into its
# limit is dropped by the search task (a cut answer must not become a chosen one).
REFINE_HEADROOM_TOKENS = 32


def _refine_plan(inp: PlanInput) -> list[dict]:
    cfg = inp.config
    failed = _failed(inp.data.judgments("refiner", role="policy"))
    ids = pick_failed(failed, inp.data.samples("policy"), cfg.max_failed_per_round, cfg.seed + inp.round_number)
    how = {"model": REFINER, "search": dataclasses.asdict(cfg.search_config()),
           "refine": {"temperature": cfg.refine_temperature, "mode": cfg.refine_mode,
                      "max_new_tokens": cfg.max_new_tokens + REFINE_HEADROOM_TOKENS},
           "judge": {"votes": cfg.judge_votes, "temperature": cfg.judge_temperature,
                     "max_new_tokens": cfg.judge_max_new_tokens, "judge": cfg.judge_mode(inp.data),
                     "model": _judge_model(cfg)}}
    # a shard's searches run in lockstep, their rewrites batched into one generation call per step
    return [{"sample_ids": ids[k:k + inp.shard_size], **how} for k in range(0, len(ids), inp.shard_size)]


def _refiner_train_plan(inp: PlanInput) -> list[dict]:
    return [{"role": "refiner"}] if inp.config.train_refiner else []


def _stages(cfg: SPaRConfig, has_eval: bool) -> list[Stage]:
    return [
        Stage("generate", "generation.generate_shard", shard_prompts(role="policy")),
        Stage("bootstrap_samples", "generation.generate_shard", _bootstrap_samples_plan),
        Stage("bootstrap_judge", "training.train_round", _judge_bootstrap_plan),
        Stage("judge_check", "judging.judge_check",
              judge_check_plan("refiner", _judge_model(cfg), "judge_votes", needed=lambda inp: _model_judges(inp.config, inp.data))),
        Stage("judge", "judging.refiner_shard", _judge_plan),
        Stage("refine", "refinement.search_sample", _refine_plan),
        Stage("pairs", "judging.build_pairs", single),
        Stage("train", "training.train_round", single),
        Stage("train_refiner", "training.train_round", _refiner_train_plan),
    ] + evaluation_stages(has_eval)


RECIPE = register(Recipe(method="spar", config_cls=SPaRConfig, stages=_stages, check_data=judge_data_errors,
                         pairs=round_pairs, training_job=training_job))
