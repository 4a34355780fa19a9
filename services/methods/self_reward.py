"""Self-Rewarding Language Models (Yuan et al., 2024, arXiv 2401.10020).

M1 = SFT of the base on instruction data (IFT: the run's prompts with references; `bootstrap_ift`)
plus evaluation data (EFT: judge requests answered with a justification and `Score: N`), done in
round 1's `bootstrap` stage when `bootstrap_sft` is on. Each round then: self-instruction (few-shot new
prompts from the seed prompts, deduplicated), N candidates per new prompt from θ(t-1), the rubric
judge (θ(t-1) itself unless `judge_version_id` names another version) sampled k times and averaged,
pairs of highest vs lowest mean score with ties dropped, and DPO from θ(t-1) with reference θ(t-1).
Where several candidates share the highest or lowest score, the pair closest in length is taken
(`length_control`), an answer cut at the token limit is never chosen (`chosen_must_end`), nor one
with junk, a leaked turn, a restated prompt or a repeated line (`chosen_must_be_sound`), the
round's pairs can be balanced so that length alone does not predict which answer is chosen
(`length_balance`), and an NLL term on the chosen answer can be added (`sft_weight`, 0 by default).

A judge it can trust (JudgeFields in base.py): when training prompts carry verifiable constraints,
round 1 first samples θ0 on them and adds verifier-written rubric judgments of those samples to M1's
EFT data (`bootstrap_judge`); every round measures its judge on a probe of training prompts before
trusting it (`judge_check`) and falls back to the verifier (or stops) below the floor. With
`judge: verifier | hybrid` (or after such a fallback) the candidates also cover the run's own
prompts with constraints, which the verifier can score; self-instructed prompts carry none.

Departures: deduplication uses word-set Jaccard similarity instead of the paper's ROUGE-L filter;
the number of new prompts per round is small by default so that a round fits on one CPU; the LoRA
learning rate is 10x the paper's full-fine-tuning 1e-6 and decays to a tenth of itself, as the
paper's 1e-6 → 1e-7.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from services.methods.base import (
    DataCheck, JudgeFields, PlanInput, Recipe, SamplingFields, Stage, TrainerFields, balance_lengths, check,
    evaluation_stages, judge_bootstrap_items, judge_check_plan, judge_data_errors, pair_length_counts, register, shards,
    single, sound_answer,
)
from services.methods.jobs import gold_examples, pairwise_job, sft_from_base_job
from services.training.config import valid_end_share


@dataclass
class SelfRewardConfig(JudgeFields, SamplingFields, TrainerFields):
    bootstrap_sft: bool = True  # round 1 first makes M1 by SFT on IFT + EFT data
    # Round 1's bootstrap trains the judge as an adapter of its own (EFT and the judge's bootstrap
    # data, no instruction data), published as the run's `judge` version, which judges every round;
    # the policy starts round 1 as θ0 itself and never trains on judge data. Off: one model
    # answers and judges (the paper's M1). Ours: on the chat-capable start, M1's SFT cost the policy
    # 2.3–3.4 points before any pair trained (docs/results.md), seven tenths of its data being the
    # judge's. Measured once: the judge adapter judged no better (0.65, below the floor), and round 1
    # from θ0 then ran on the verifier's pairs (−1.7 / −0.6, answers cut at the limit 31–55 %).
    judge_apart: bool = False
    # M1's instruction data (IFT): the run's prompts with their references, as the paper's seed
    # IFT data. Off, M1 learns only to judge (EFT and the judge's bootstrap data). Measured on the
    # chat-capable start (docs/results.md): with IFT, M1 lost 3.4 points (another pass over the
    # curriculum's short references shortened its answers); without it, M1 answered 213 of 350
    # held-out prompts in the judge's check language and lost 22 points. The IFT is what keeps
    # M1 answering; leave it on unless the judge data cannot be mistaken for an answer.
    bootstrap_ift: bool = True
    # Where that instruction data comes from: `references` (the run's prompts with their gold
    # references, the paper's seed IFT data) or `own_answers`: θ0's own answers to the run's
    # prompts with constraints that the verifier passes, that ended and are sound (the samples
    # round 1 draws for the judge's data), so M1 keeps answering in the start's own voice instead
    # of moving toward the references' length: a ReST-EM step inside M1 (`own_answer_examples`).
    # Measured (docs/results.md): M1 kept the start's length and lost 2.3 points (−3.4 with the
    # references), both within noise of zero.
    ift_source: str = "references"
    # With own_answers: a prompt none of whose answers passed adds one verified mechanical fix of a
    # failed answer (ReST-EM's `repair_failed`), so M1's instruction data covers more than the
    # prompts θ0 already solves.
    ift_repairs: bool = True
    eft_prompt_set_ids: list = field(default_factory=list)  # judge-training sets (prompt → judgment)
    bootstrap_learning_rate: float = 1e-4
    new_prompts_per_round: int = 32
    few_shot: int = 8  # [8-shot]
    instruct_temperature: float = 0.6  # [0.6]
    instruct_top_p: float = 0.9  # [0.9]
    dedupe_threshold: float = 0.7  # Jaccard similarity above which a new prompt is a duplicate
    # A new prompt must read as a request: begin with a word a seed prompt begins with, or end in a
    # question, and not talk like the judge (parse_new_prompt). Off, the first line after the
    # "Task N" header is kept whatever it says (3–200 words).
    new_prompts_like_seeds: bool = True
    # The stage asks for 2 x new_prompts_per_round tasks at a time, at most this many times, until
    # it holds new_prompts_per_round new prompts after parsing and deduplication: with the request
    # filter a round's first batch kept 8 of 64 answers (docs/results.md). 1 asks once.
    instruct_batches: int = 4
    samples_per_prompt: int = 4  # N [4]
    temperature: float = 0.7  # [0.7]
    top_p: float = 0.9  # [0.9]
    max_new_tokens: int = 256
    judge_samples: int = 3  # k [3]
    judge_temperature: float = 0.7
    judge_max_new_tokens: int = 256
    # Where several candidates share the best (or worst) score, pair those closest in length
    # (best_worst_pairs); the paper does not say which of tied candidates it takes.
    length_control: bool = True
    # An answer cut at max_new_tokens is never chosen (it may be rejected); see best_worst_pairs.
    chosen_must_end: bool = True
    # An unsound answer (junk, a leaked turn, a restated prompt, a line written three times) is never
    # chosen either; see best_worst_pairs. Off, the judge's score alone decides (the paper).
    chosen_must_be_sound: bool = True
    # The largest share of a round's pairs in which one side (chosen or rejected) is the longer
    # answer; above it, the pairs of the majority side with the largest word-count gap are dropped
    # (balance_lengths). 1.0 keeps every pair (the paper); 0.5 asks for as many of each.
    length_balance: float = 1.0
    beta: float = 0.1  # [0.1]
    # Weight of an NLL term on the chosen answer beside DPO (0 = the paper's pure DPO). Pang et al.
    # (2024, Iterative Reasoning Preference Optimization) found such a term, weight 1, needed for
    # iterated DPO on the model's own answers not to push the chosen ones down with the rejected.
    sft_weight: float = 0.0
    # Score a rejected answer's end-of-turn in DPO (the paper's full-sequence DPO) or not (the
    # default here): pushing the ending of rejected answers down made answers run to the token
    # limit after one round at lr 1e-4 (62 % of held-out answers cut); leaving it unscored, on the
    # same pairs, kept the cut share at the start's (18 %, docs/results.md). TrainConfig's
    # `score_rejected_end`; a `train` override wins.
    score_rejected_end: bool | float = False  # or a share in [0, 1]: see TrainConfig
    learning_rate: float = 1e-5  # [1e-6 → 1e-7 over training, full fine-tuning]; LoRA: 10x
    final_lr_ratio: float = 0.1  # the decay's floor as a share of learning_rate: 1e-6 → 1e-7
    SAMPLES_RANGE = (2, 64)
    SAMPLES_WHY = " (pairs need two)"

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        self.check_sampling_fields()
        self.check_judge_fields()
        check(isinstance(self.eft_prompt_set_ids, list) and all(
            type(i) is int for i in self.eft_prompt_set_ids), "eft_prompt_set_ids", "must be a list of integer ids")
        check(self.bootstrap_learning_rate > 0, "bootstrap_learning_rate", "must be > 0")
        check(1 <= self.new_prompts_per_round <= 100_000, "new_prompts_per_round", "must be in 1..100000")
        check(1 <= self.few_shot <= 32, "few_shot", "must be in 1..32")
        check(self.instruct_temperature > 0, "instruct_temperature", "must be > 0")
        check(0 < self.instruct_top_p <= 1, "instruct_top_p", "must be in (0, 1]")
        check(0 < self.dedupe_threshold <= 1, "dedupe_threshold", "must be in (0, 1]")
        check(1 <= self.judge_samples <= 16, "judge_samples", "must be in 1..16")
        check(self.judge_temperature > 0, "judge_temperature", "must be > 0 (votes are sampled)")
        check(self.beta > 0, "beta", "must be > 0")
        check(isinstance(self.length_control, bool), "length_control", "must be true or false")
        check(isinstance(self.chosen_must_end, bool), "chosen_must_end", "must be true or false")
        check(isinstance(self.chosen_must_be_sound, bool), "chosen_must_be_sound", "must be true or false")
        check(isinstance(self.new_prompts_like_seeds, bool), "new_prompts_like_seeds", "must be true or false")
        check(isinstance(self.bootstrap_ift, bool), "bootstrap_ift", "must be true or false")
        check(self.ift_source in ("references", "own_answers"), "ift_source", "must be references or own_answers")
        check(isinstance(self.ift_repairs, bool), "ift_repairs", "must be true or false")
        check(isinstance(self.judge_apart, bool), "judge_apart", "must be true or false")
        check(not (self.judge_apart and not self.bootstrap_sft), "judge_apart",
              "trains the judge in round 1's bootstrap: it needs bootstrap_sft on")
        check(not (self.judge_apart and self.judge_version_id is not None), "judge_apart",
              "and judge_version_id both name the judge: choose one")
        check(type(self.instruct_batches) is int and 1 <= self.instruct_batches <= 32, "instruct_batches",
              "must be an integer in 1..32")
        check(0.5 <= self.length_balance <= 1, "length_balance", "must be in [0.5, 1] (1 keeps every pair)")
        check(0 <= self.sft_weight <= 100, "sft_weight", "must be in [0, 100]")
        check(valid_end_share(self.score_rejected_end), "score_rejected_end",
              "must be true, false or a share in [0, 1]")
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import trainer_config

        # the paper decays the learning rate from 1e-6 to 1e-7, not to 0
        return trainer_config(self, loss="sigmoid", beta=self.beta, learning_rate=self.learning_rate,
                              final_lr_ratio=self.final_lr_ratio, sft_weight=self.sft_weight,
                              score_rejected_end=self.score_rejected_end)

    @property
    def m1_ift(self) -> str | None:
        """Where M1's instruction data comes from (`ift_source`), or None when it learns none:
        `bootstrap_ift` off, or the judge trained apart (then no policy is trained in round 1)."""
        return self.ift_source if self.bootstrap_ift and not self.judge_apart else None

    @property
    def ift_from_own_answers(self) -> bool:
        return self.m1_ift == "own_answers"

    def bootstrap_config(self):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.bootstrap_learning_rate)


# ---------------------------------------------------------------- self-instruction
_PREAMBLE = "Here are some tasks people ask an assistant to do:"
_ASK = "Write one new task in the same spirit but on a different subject."


def instruct_messages(seed_prompts: list[str], rng: random.Random, k: int) -> list[dict]:
    """A few-shot request for one new task, with k seed tasks drawn by `rng`, one line each."""
    shots = rng.sample(seed_prompts, min(k, len(seed_prompts)))
    listing = "\n".join(f"Task {i + 1}: {' '.join(p.split())}" for i, p in enumerate(shots))
    return [{"role": "user", "content":
             f"{_PREAMBLE}\n{listing}\n\n{_ASK} Reply with the task only, starting with 'Task {len(shots) + 1}:'."}]


_DECOR = "*>#<-\"'` \t\n"  # bullets, arrows, quotes and wrappers a small model puts around a task
_TASK_HEADER = re.compile(rf"^[{re.escape(_DECOR)}]*task\s*\d*\s*[:.)\-]?\s*", re.I)
_NEXT_TASK = re.compile(r"\s(?:task\s*\d+\s*:)", re.I)
# the judge's own output formats (services/judging/verifier_judge.py, rubric.py, refiner.py): a
# policy that was taught to judge writes them where a task was asked for
_JUDGE_TALK = re.compile(r"\bit is (?:followed|broken)\b|\b(?:score|verdict|checks)\s*:", re.I)
# The assistant's own closing offer, which asks the user nothing ("Is there anything else I can
# help you with?"): it ends in a question, so the opener rule alone lets it through.
_ASSISTANT_TALK = re.compile(r"\banything else\b|\b(?:help|assist)(?:ing)? you\b", re.I)
# words that present material rather than ask for something ("Here is a claim about tea: …"): a seed
# may begin so and go on to ask, but a new task that begins so must itself end in a question
_PRESENTING = frozenset({"here", "this", "these", "the", "a", "an", "below", "following"})


def task_openers(seed_prompts: list[str]) -> frozenset[str]:
    """The words the seed prompts begin with (lowercased), less those that only present material:
    what a request looks like in this run."""
    return frozenset(w for w in (_first_word(p) for p in seed_prompts) if w and w not in _PRESENTING)


def _first_word(text: str) -> str:
    m = re.match(r"[^a-z0-9]*([a-z0-9']+)", text.lower())
    return m.group(1) if m else ""


def parse_new_prompt(text: str, openers: frozenset[str] | None = None) -> str | None:
    """The task text from a self-instruction answer, or None when nothing usable came back.

    The answer's "Task N" header (with or without its colon, behind a bullet or an arrow) and any
    wrapping quotes or brackets are taken off, and the task is its first line (the request lists
    every task on one line), up to a next "Task N:". With `openers` (task_openers of the seeds) the
    task must also read as a request: begin with a word some seed begins with ("Write …",
    "Explain …"; not "Here …") or end in a question, and be neither a line of the request itself,
    the judge's check format nor the assistant's closing offer ("Anything else I can help you
    with?"). A 270M policy asked for a new task mostly writes a statement ("Owls are birds that
    mostly hunt at night."), a bullet list or its judge's checks instead (27 of the 32 prompts one
    round stored before this filter), and candidates for such a prompt teach nothing a user asks
    for."""
    text = _TASK_HEADER.sub("", text.strip(), count=1)
    text = _NEXT_TASK.split(text.split("\n")[0])[0].strip(_DECOR)
    if not 3 <= len(text.split()) <= 200:
        return None
    if openers is not None and (
            (_first_word(text) not in openers and not text.endswith("?"))
            or _JUDGE_TALK.search(text) or _ASSISTANT_TALK.search(text)
            or any(_words(text) <= _words(line) for line in (_PREAMBLE, _ASK))):
        return None
    return text


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def dedupe(candidates: list[str], existing: list[str], threshold: float) -> list[str]:
    """Keep candidates whose word-set Jaccard similarity to every existing and earlier kept prompt
    is below `threshold`."""
    kept: list[str] = []
    pool = [_words(e) for e in existing]
    for c in candidates:
        w = _words(c)
        if not w or any(len(w & o) / len(w | o) >= threshold for o in pool if o):
            continue
        kept.append(c)
        pool.append(w)
    return kept


# ---------------------------------------------------------------- pairs
def best_worst_pairs(candidates: dict[int, list[tuple[int, str, float | None]]], *,
                     length_control: bool = True, cut: frozenset = frozenset(),
                     unsound: frozenset | None = None) -> tuple[list[dict], dict]:
    """Per prompt: chosen = highest mean judge score, rejected = lowest; prompts whose extremes tie,
    or with fewer than two scored candidates, give no pair.

    When several answers share the highest (or the lowest) score, the paper leaves open which one is
    taken. With `length_control` the pair whose word counts differ least is taken (then the lowest
    indices), so that where the scores leave a choice, length does not tell chosen from rejected:
    DPO otherwise learns "shorter" (or "longer") faster than what the judge rewarded. Without it,
    the first of each.

    An answer in `cut` ((prompt_id, index) of answers that ran into the token limit) may be
    rejected but is never chosen: a judge scores the part it sees, so a cut answer can score as well
    as a whole one, and preferring it teaches the policy not to end (the next best answer that ended
    is chosen instead, if it still scores above the worst). The same holds for an answer in `unsound`
    (one with junk, a leaked turn, a restated prompt or a line written three times: `sound` in
    services/judging/degeneration.py): the score rewards what the judge checks, and choosing such an
    answer would teach the rest along with it.

    candidates: {prompt_id: [(index, text, mean score or None)]}. The counts report how many pairs
    have the longer answer rejected and the mean word counts, which is how a length drift shows, and
    on how many prompts a cut (`cut_best_passed_over`) or an unsound answer that ended
    (`unsound_best_passed_over`, with `unsound` given) had the best score.
    """
    pairs, ties, unscored, passed_over, unsound_over = [], 0, 0, 0, 0
    unsound_only = (unsound or frozenset()) - cut
    unfit = cut | unsound_only
    for pid, cands in sorted(candidates.items()):
        scored = sorted((i, t, s) for i, t, s in cands if s is not None)
        if len(scored) < 2:
            unscored += 1
            continue
        fit = [c for c in scored if (pid, c[0]) not in unfit]
        lo = min(s for _, _, s in scored)
        hi = max((s for _, _, s in fit), default=lo)
        passed_over += any(s > hi for i, _, s in scored if (pid, i) in cut)
        unsound_over += any(s > hi for i, _, s in scored if (pid, i) in unsound_only)
        if hi == lo:
            ties += 1
            continue
        tops = [c for c in fit if c[2] == hi]
        bottoms = [c for c in scored if c[2] == lo]
        if length_control:
            best, worst = min(((b, w) for b in tops for w in bottoms), key=lambda bw: (
                abs(len(bw[0][1].split()) - len(bw[1][1].split())), bw[0][0], bw[1][0]))
        else:
            best, worst = tops[0], bottoms[0]
        pairs.append({"prompt_id": pid, "index": 0, "source": "judge_best_worst", "chosen": best[1],
                      "rejected": worst[1], "margin": hi - lo})
    return pairs, {"pairs": len(pairs), "ties_dropped": ties, "unscored_prompts": unscored,
                   "cut_best_passed_over": passed_over,
                   **({"unsound_best_passed_over": unsound_over} if unsound is not None else {}), **pair_length_counts(pairs)}


# ---------------------------------------------------------------- hooks
def check_data(check: DataCheck) -> list[dict]:
    """The config's prompt sets (judge training data) and judge version must be the workspace's."""
    cfg = check.config
    errors = check.missing("prompt_set", cfg.eft_prompt_set_ids, ["config", "eft_prompt_set_ids"]) + judge_data_errors(check)
    if not errors:  # EFT items teach the judge its output format: each reference must end in `Score: N`
        from services.judging.rubric import parse_score

        bad = [p for p in check.read_sets(list(cfg.eft_prompt_set_ids))
               if not p["reference"] or parse_score(p["reference"].strip().splitlines()[-1]) is None]
        if bad:
            errors.append({"loc": ["config", "eft_prompt_set_ids"], "msg": (
                f"{len(bad)} EFT item(s) (e.g. prompt {bad[0]['id']} of set {bad[0]['prompt_set_id']}) have no "
                "reference ending in a line 'Score: N' (N in 0..5); EFT items are judge requests answered "
                "with a justification and that score line")})
    return errors


def round_pairs(data, cfg: SelfRewardConfig) -> tuple[list[dict], dict]:
    from services.judging.degeneration import hit_limit
    from services.judging.rubric import mean_score

    samples = data.samples("candidate")
    scores: dict[int, list] = {}
    for j in data.judgments("rubric", role="candidate"):
        scores.setdefault(j["sample_id"], []).append(j["score"])
    cands: dict[int, list] = {}
    for x in samples:
        cands.setdefault(x["prompt_id"], []).append((x["index"], x["text"], mean_score(scores.get(x["id"], []))))
    cut = frozenset((x["prompt_id"], x["index"]) for x in samples if hit_limit(x["finish_reason"])) \
        if cfg.chosen_must_end else frozenset()
    unsound = None
    if cfg.chosen_must_be_sound:
        prompts = data.prompts(sorted({x["prompt_id"] for x in samples}))
        unsound = frozenset((x["prompt_id"], x["index"]) for x in samples
                            if not sound_answer(x["text"], prompts[x["prompt_id"]]))
    pairs, counts = best_worst_pairs(cands, length_control=cfg.length_control, cut=cut, unsound=unsound)
    pairs, dropped = balance_lengths(pairs, cfg.length_balance)
    if dropped["dropped_for_length"]:  # the length counts describe the pairs that train
        counts = {**counts, **pair_length_counts(pairs), "pairs": len(pairs)}
    unparsed = sum(v is None for vs in scores.values() for v in vs)
    return pairs, {**counts, **dropped, "samples": len(samples), "judgments_unparsed": unparsed}


def own_answer_examples(data, repair: bool = True) -> list[dict]:
    """M1's instruction data from θ0 itself (`ift_source: own_answers`): ReST-EM's E-step over its
    round-1 bootstrap answers to the run's own prompts (never a judge set's: the actor does not
    train on those). The distinct answers the verifier passes that ended before the token limit and
    are sound (`sound_answer`); with `repair`, also one verified mechanical fix for each prompt none
    of whose answers passed (services/methods/rest_em.py `repairs`)."""
    from services.judging.verifier import verify
    from services.methods.rest_em import repairs, select_correct

    run = {p["id"] for p in data.run_prompts() if p["constraints"]}
    samples = [x for x in data.samples("bootstrap") if x["prompt_id"] in run]
    prompts = data.prompts(sorted({x["prompt_id"] for x in samples}))

    def reward(x):
        p = prompts[x["prompt_id"]]
        return float(verify(x["text"], p["constraints"], p["messages"][-1]["content"]).strict)

    scored = [{**x, "reward": reward(x)} for x in samples]
    kept, _ = select_correct(scored, len(scored) or 1, sound=lambda x: sound_answer(x["text"], prompts[x["prompt_id"]]))
    solved = {k["prompt_id"] for k in kept}
    fixed = repairs(scored, {i: p for i, p in prompts.items() if i not in solved}) if repair else []
    return [{"messages": prompts[x["prompt_id"]]["messages"], "response": x["text"]} for x in kept + fixed]


def training_job(data, cfg: SelfRewardConfig, role: str):
    if role == "bootstrap":  # M1: SFT of the base on instruction (IFT) and evaluation (EFT) data
        ift = []
        if cfg.m1_ift == "own_answers":
            ift = own_answer_examples(data, cfg.ift_repairs)
        elif cfg.m1_ift == "references":
            ift = gold_examples(data, list(data.prompt_set_ids))
        items = ift + (gold_examples(data, list(cfg.eft_prompt_set_ids)) if cfg.eft_prompt_set_ids else [])
        # no judge data when the samples were drawn for own_answers alone
        judge_items, stats = judge_bootstrap_items(data, cfg, ("rubric",), ("bootstrap",) if cfg.bootstraps_judge else ())
        # judge apart: the judge's own adapter (the `role:judge` model); else M1, the round's policy
        where = {"role": "judge", "label": "bootstrap"} if cfg.judge_apart else {"sets_policy": True}
        return sft_from_base_job(data, items + judge_items, cfg.bootstrap_config(),
                                 {"sft_examples": len(items) + len(judge_items), "ift_examples": len(ift), **stats},
                                 key_round=0, **where)
    return pairwise_job(data, cfg) if role == "policy" else None


# ---------------------------------------------------------------- stages
def _self_instruct_plan(inp: PlanInput) -> list[dict]:
    """New prompts, unless the verifier alone judges this round (by choice, or after the judge
    check fell below its floor): self-instructed prompts carry no constraints, so their candidates
    could not be scored and would cost a generation stage for nothing."""
    if inp.config.judge_mode(inp.data) == "verifier":
        return []
    return [{"count": inp.config.new_prompts_per_round}]


def _candidate_ids(inp: PlanInput) -> list[int]:
    """The round's self-instructed prompts (none when the verifier alone judges), plus the run's
    prompts with constraints when the verifier judges (it can only score those)."""
    mode = inp.config.judge_mode(inp.data)
    ids = [p["id"] for p in inp.data.round_prompts()] if mode != "verifier" else []
    if mode != "llm":
        ids += [p["id"] for p in inp.data.run_prompts() if p["constraints"]]
    return ids


def _candidate_shards(inp: PlanInput) -> list[dict]:
    return shards(_candidate_ids(inp), inp.shard_size, role="candidate", n=inp.config.samples_per_prompt)


def _judge_model(cfg: SelfRewardConfig) -> str:
    if cfg.judge_version_id is not None:
        return f"version:{cfg.judge_version_id}"
    return "role:judge" if cfg.judge_apart else "policy"


def _judge_shards(inp: PlanInput) -> list[dict]:
    """Rubric votes on the candidates, by θ(t-1) itself unless the config names a judge version or
    keeps the judge apart (or by the verifier: judge verifier / hybrid, or after a failed judge
    check)."""
    cfg = inp.config
    return shards(_candidate_ids(inp), inp.shard_size, role="candidate", model=_judge_model(cfg),
                  votes=cfg.judge_samples, temperature=cfg.judge_temperature,
                  max_new_tokens=cfg.judge_max_new_tokens, judge=cfg.judge_mode(inp.data))


def _bootstrap_plan(inp: PlanInput) -> list[dict]:
    return [{"role": "bootstrap"}] if inp.round_number == 1 and inp.config.bootstrap_sft else []


def _bootstrap_samples_plan(inp: PlanInput) -> list[dict]:
    """Round 1, before M1: θ0's answers to the constrained training prompts, for the judge's data
    (and for M1's instruction data with `ift_source: own_answers`)."""
    cfg = inp.config
    if not (inp.round_number == 1 and cfg.bootstrap_sft and (cfg.ift_from_own_answers or cfg.bootstraps_judge)):
        return []
    boot, _ = cfg.constrained_split(inp.data)
    return shards(boot, inp.shard_size, role="bootstrap", n=2)


def _stages(cfg: SelfRewardConfig, has_eval: bool) -> list[Stage]:
    return [
        Stage("bootstrap_samples", "generation.generate_shard", _bootstrap_samples_plan),
        Stage("bootstrap", "training.train_round", _bootstrap_plan),
        Stage("judge_check", "judging.judge_check", judge_check_plan("rubric", _judge_model(cfg), "judge_samples")),
        Stage("self_instruct", "generation.self_instruct", _self_instruct_plan),
        Stage("generate", "generation.generate_shard", _candidate_shards),
        Stage("judge", "judging.rubric_shard", _judge_shards),
        Stage("pairs", "judging.build_pairs", single),
        Stage("train", "training.train_round", single),
    ] + evaluation_stages(has_eval)


RECIPE = register(Recipe(method="self_reward", config_cls=SelfRewardConfig, stages=_stages, check_data=check_data,
                         pairs=round_pairs, training_job=training_job))
