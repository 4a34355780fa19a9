"""What a method recipe is: a validated config dataclass, the ordered stages of one round, and
the hooks the generic machinery calls for the method's own data.

A stage names the task that does its work and how the work is split into StageTasks (shards).
The conductor only ever sees this shape, and the generic tasks only call the hooks, so adding a
method is one recipe module (registered with `register`) and never touches a service:

- `check_data(check) -> errors`: refuse a run whose prompts cannot feed the method, before any
  work is queued (same check for the API and the embedded mode, see runs.py);
- `pairs(data, config) -> (pairs, counts)`: the round's preference pairs (`judging.build_pairs`);
- `training_job(data, config, role) -> TrainJob`: what a `training.train_round` task with that
  payload role trains (`policy`, `refiner`, `bootstrap`, ...).

`data` is a shared.round_data.RoundData: a read-only view of the round, never a session.
A method-only task (Self-Rewarding's self-instruction) is a task in the recipe's module,
registered with `shared.queue.task` when the module is imported.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from shared import recipes as _registry
from shared.models import EVAL_ROLES
from shared.tracking import parse_backends

ON_REGRESSION = ("keep_previous", "stop", "continue")


@dataclass(frozen=True)
class PlanInput:
    """Plain data a stage's planner may use to split its work."""

    prompt_ids: list[int]  # the run's training prompts, in a stable order
    eval_prompt_ids: list[int]  # held-out prompts (may be empty)
    round_number: int
    total_rounds: int
    shard_size: int
    config: Any
    round_id: int = 0
    # A read-only view of the round (shared.round_data.RoundData), for planners that split work
    # by rows earlier stages wrote (failed samples, self-instructed prompts).
    data: Any = None


@dataclass(frozen=True)
class Stage:
    name: str
    task: str  # Celery task name, '<queue>.<verb>'
    plan: Callable[[PlanInput], list[dict]]  # one payload per StageTask; [] skips the stage


@dataclass(frozen=True)
class DataCheck:
    """What a recipe's data check sees of a run being created: its training prompts as plain dicts
    ({"id", "prompt_set_id", "messages", "reference", "constraints", "answer"}), its config, and
    `missing(kind, ids, loc)`: errors for ids of "prompt_set" or "model_version" that do not exist
    in the run's workspace."""

    prompts: list[dict]
    config: Any
    missing: Callable[[str, list, list], list[dict]]
    read_sets: Callable[[list[int]], list[dict]] = lambda ids: []  # prompts of other sets of the workspace


@dataclass(frozen=True)
class Recipe:
    method: str
    config_cls: type
    stages: Callable[[Any, bool], list[Stage]]  # (config, has_eval_prompts) -> stages
    check_data: Callable[[DataCheck], list[dict]] = lambda check: []
    pairs: Callable[[Any, Any], tuple[list[dict], dict]] | None = None
    training_job: Callable[[Any, Any, str], Any] | None = None

    def load_config(self, data: dict | None) -> Any:
        """The config from stored JSON (parse_stored_config); ValueError naming the fields when it
        does not validate."""
        cfg, errors = parse_stored_config(self.config_cls, data)
        if errors:
            raise ValueError(str(errors))
        return cfg


def register(recipe: Recipe) -> Recipe:
    """Make `recipe` known to the conductor, the run creation and the generic tasks."""
    return _registry.register(recipe)


def shards(ids: list[int], size: int, **extra: Any) -> list[dict]:
    size = max(1, size)
    return [{"prompt_ids": ids[i:i + size], **extra} for i in range(0, len(ids), size)]


def shard_prompts(key: str = "prompt_ids", **extra: Any) -> Callable[[PlanInput], list[dict]]:
    """Planner: split the run's (or held-out) prompts into shards of `shard_size`."""

    def plan(inp: PlanInput) -> list[dict]:
        ids = inp.prompt_ids if key == "prompt_ids" else inp.eval_prompt_ids
        return shards(ids, inp.shard_size, **extra)

    return plan


def single(inp: PlanInput) -> list[dict]:
    """Planner: the whole stage is one task."""
    return [{}]


def parse_config(config_cls: type, data: dict | None) -> tuple[Any, list[dict]]:
    """Build a method config from user JSON. Returns (config, []) or (None, errors) where each
    error is {"loc": [...], "msg": ...} naming the offending field."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        return None, [{"loc": ["config", k], "msg": f"unknown key {k!r}; allowed: {sorted(names)}"}
                      for k in unknown]
    try:
        return config_cls(**data), []
    except (TypeError, ValueError) as exc:
        field = getattr(exc, "field", None) or _field_in_message(str(exc), names)
        return None, [{"loc": ["config"] + ([field] if field else []), "msg": str(exc)}]


def parse_stored_config(config_cls: type, data: dict | None) -> tuple[Any, list[dict]]:
    """parse_config for a config already stored on a run. Configs stored before switches were typed
    may hold a loose value in a bool field (`"mix_previous_pairs": 0`, `"train": {"lora": 1}`), which
    the code then read by truth; such a value is read the same way here (bool(value)), so a run
    submitted then still advances, doing what it did. One exception: a falsy `train.lora` (0, "")
    did full fine-tuning then, which runs no longer do (they publish and chain LoRA adapters), so it
    reads as false and the run stops with that config error. Only switches are relaxed; any other
    stored value is checked as on submission. A submission is never parsed this way: a loose switch
    there is a 422 (parse_config)."""
    from services.methods.bounds import field_kind
    from services.training.config import TrainConfig

    def switches(cls: type, values: dict) -> dict:
        kinds = {f.name: field_kind(f.type) for f in dataclasses.fields(cls)}
        return {k: bool(v) if kinds.get(k) is bool and v is not None and not isinstance(v, bool) else v
                for k, v in values.items()}

    data = switches(config_cls, dict(data or {}))
    if isinstance(data.get("train"), dict):
        data["train"] = switches(TrainConfig, data["train"])
    return parse_config(config_cls, data)


def config_json(config: Any) -> dict:
    """A validated config as the JSON stored on the run (every field, defaults included)."""
    import json

    return json.loads(json.dumps(dataclasses.asdict(config)))


def _field_in_message(msg: str, names: set[str]) -> str | None:
    hits = [n for n in names if n in msg]
    return max(hits, key=len) if hits else None


def get_recipe(method: str) -> Recipe:
    import services.methods.registry  # noqa: F401 - the built-in recipes register on import

    return _registry.recipe_for(method)


def check(cond: bool, field: str, msg: str) -> None:
    """Config validation helper: raise a ValueError that names the field."""
    if not cond:
        err = ValueError(f"{field}: {msg}")
        err.field = field  # type: ignore[attr-defined]
        raise err


def eval_shards(inp: PlanInput) -> list[dict]:
    """Planner of the evaluation's generation: greedy answers to the held-out prompts from the
    version the round produced, and in round 1 also from the base (the 'before' point) and from the
    policy the round trained from when round 1 made it itself (`eval_policy`: Self-Rewarding's M1),
    so that what that step did is measured apart from the round's own training."""
    roles = ["eval"] + (["eval_base"] if inp.round_number == 1 else [])
    if inp.round_number == 1 and inp.data is not None and inp.data.policy["adapter"]:
        roles.append("eval_policy")
    budget = getattr(inp.config, "eval_max_new_tokens", None)
    extra = {"max_new_tokens": budget} if budget else {}
    return [shard for role in roles
            for shard in shards(inp.eval_prompt_ids, inp.shard_size, role=role, model=EVAL_ROLES[role], greedy=True,
                                n=1, **extra)]


def evaluation_stages(has_eval: bool) -> list[Stage]:
    """The stages every recipe ends with when the run has held-out prompts."""
    if not has_eval:
        return []
    return [Stage("eval_generate", "generation.generate_shard", eval_shards),
            Stage("evaluate", "judging.evaluate", single)]


@dataclass
class TrainerFields:
    """Trainer settings every method config carries; `train` passes any other TrainConfig field
    through (e.g. {"schedule": "cosine"}). Method configs subclass this and may change defaults."""

    epochs: int = 1
    batch_size: int = 8
    grad_accum: int = 1
    lora_r: int = 16
    lora_alpha: int = 32
    max_prompt_tokens: int = 512
    max_response_tokens: int = 512
    seed: int = 0
    train: dict = dataclasses.field(default_factory=dict)
    # Evaluation: rubric-judge each held-out answer this many times with the evaluated model
    # itself (0 = off: the mean judge score then stays empty and evaluation costs no LLM calls).
    eval_judge_samples: int = 0
    # Round gating (services/judging/regression.py), applied when a round was evaluated: a round
    # whose held-out accuracy fell beyond its paired 95 % interval, whose degenerate answers exceed
    # `max_degenerate_rate`, or whose answers cut at the token limit rose by more than
    # `max_limit_rate_rise` is a regression. keep_previous: the next round starts again from the
    # policy this round started from; stop: the run ends (status "stopped", the reason in `error`);
    # continue: adopt it anyway (the verdict is still recorded). The best version is promoted.
    on_regression: str = "keep_previous"
    max_degenerate_rate: float = 0.2
    # 10 points: two drifts that came with lost accuracy rose 15 (Self-Rewarding, 17 → 32 %) and 17
    # points (ReST-EM, 18 → 35 %) over three rounds and passed the earlier 25-point ceiling
    # (docs/results.md); the rounds that gained lowered the share.
    max_limit_rate_rise: float = 0.10
    # Experiment tracking for this run: "" uses the deployment's setting (AUTODIDACT_TRACKING);
    # "none", or a comma list of mlflow, tensorboard (shared/tracking.py).
    tracking: str = ""

    def check_trainer_fields(self) -> None:
        from services.methods.bounds import check_numbers

        check_numbers(self)  # types and upper bounds of every numeric field, the subclass's included
        check(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        check(self.batch_size >= 1, "batch_size", "must be >= 1")
        check(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        check(self.lora_r >= 1, "lora_r", "must be >= 1")
        check(isinstance(self.train, dict), "train", "must be an object of TrainConfig fields")
        check(isinstance(self.tracking, str), "tracking", "must be a string: 'none' or e.g. 'mlflow,tensorboard'")
        try:
            parse_backends(self.tracking, allow_empty=True)
        except ValueError as exc:
            check(False, "tracking", str(exc))
        check(0 <= self.eval_judge_samples <= 16, "eval_judge_samples", "must be in 0..16")
        check(self.on_regression in ON_REGRESSION, "on_regression", f"must be one of {', '.join(ON_REGRESSION)}")
        check(0 <= self.max_degenerate_rate <= 1, "max_degenerate_rate", "must be in [0, 1]")
        check(0 <= self.max_limit_rate_rise <= 1, "max_limit_rate_rise", "must be in [0, 1]")


@dataclass
class SamplingFields:
    """How a method samples its policy; the generation task reads these from the run's config.
    Method configs subclass this, may change the defaults, and may narrow SAMPLES_RANGE."""

    samples_per_prompt: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 256
    # The held-out evaluation's token budget (its greedy answers, the start's and each round's); None
    # uses max_new_tokens. A run whose samples get a large budget can still be evaluated at the budget
    # its results are compared at (another run's, a published table's): the share of answers cut at
    # the limit, and so accuracy, depends on it.
    eval_max_new_tokens: int | None = None
    SAMPLES_RANGE: ClassVar[tuple[int, int]] = (1, 64)
    SAMPLES_WHY: ClassVar[str] = ""

    def check_sampling_fields(self) -> None:
        lo, hi = self.SAMPLES_RANGE
        check(lo <= self.samples_per_prompt <= hi, "samples_per_prompt", f"must be in {lo}..{hi}{self.SAMPLES_WHY}")
        check(self.temperature > 0, "temperature", f"must be > 0 (the method samples), got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        check(self.top_k >= 0, "top_k", "must be >= 0 (0 = off)")
        check(1 <= self.max_new_tokens <= 8192, "max_new_tokens", "must be in 1..8192")
        check(self.eval_max_new_tokens is None or 1 <= self.eval_max_new_tokens <= 8192, "eval_max_new_tokens",
              "must be in 1..8192, or null for max_new_tokens")


@dataclass
class JudgeFields:
    """How a self-judged method (Self-Rewarding, SPaR) gets a judge it can trust.

    - `judge`: self (the papers' method: the model judges its own samples), verifier (the IFEval
      verifier writes the judgments, for prompts with constraints), or hybrid (the verifier where
      a prompt has constraints, the model elsewhere). A model version as judge is
      `judge_version_id`.
    - `bootstrap_judge`: in round 1, before judging, teach the judge from the model's own samples on
      training prompts with constraints, labelled by the verifier and written in the judge's exact
      output format (services/curriculum/judge_data.py) — the role of the papers' seed EFT data
      and of SPaR's GPT-4o-built refiner data. Skipped when no training prompt has constraints.
    - judge check: before each self-judged round trusts its judge, measure it on a probe of
      `judge_check_prompts` training prompts with constraints (kept out of the bootstrap data):
      parseable rate and accuracy against the verifier must reach the floors, else `on_weak_judge`:
      stop (the run fails with the numbers) or verifier (this round is judged by the verifier).
      `judge_check_decides_on`: the accuracy's point estimate (default) or the lower end of its
      95 % interval over the probe's prompts (`lower_bound`: trust only a judge the probe shows to
      be above the floor; on the ~20 comparisons of a 24-prompt probe the interval spans about
      ±0.2, 0.81 [0.61, 0.97] in one run, so raise `judge_check_prompts` with it).
    - `judge_prompt_set_ids`: prompt sets with verifiable constraints that only teach and probe the
      judge (never the policy's training data). A run whose own prompts have no constraints, or too
      few to teach a judge (a few dozen verdict examples do not teach a 270M model the format;
      bench/judges.py), gets its bootstrap data and probe from these; the built-in curriculum's
      training split (`autodidact curriculum`) is one such set. Their prompts come after the run's,
      so the probe is drawn from them first.
    """

    judge: str = "self"
    judge_version_id: int | None = None  # None: the method's own judge model
    bootstrap_judge: bool = True
    bootstrap_judge_learning_rate: float = 1e-4  # LoRA SFT of the judge (see chat_start.py)
    bootstrap_judge_epochs: int = 2
    judge_check_prompts: int = 24  # 0 = no check
    judge_floor_parseable: float = 0.9
    judge_floor_accuracy: float = 0.7
    on_weak_judge: str = "verifier"
    judge_check_decides_on: str = "estimate"
    judge_prompt_set_ids: list = dataclasses.field(default_factory=list)

    def check_judge_fields(self) -> None:
        check(isinstance(self.judge_prompt_set_ids, list) and all(type(i) is int for i in self.judge_prompt_set_ids),
              "judge_prompt_set_ids", "must be a list of integer prompt set ids")
        check(self.judge in JUDGES, "judge", f"must be one of {', '.join(JUDGES)}")
        check(self.judge_version_id is None or type(self.judge_version_id) is int, "judge_version_id",
              "must be an integer model version id or null")
        check(0 < self.bootstrap_judge_learning_rate <= 1e-2, "bootstrap_judge_learning_rate", "must be in (0, 0.01]")
        check(1 <= self.bootstrap_judge_epochs <= 10, "bootstrap_judge_epochs", "must be in 1..10")
        check(0 <= self.judge_check_prompts <= 1000, "judge_check_prompts", "must be in 0..1000")
        check(0 <= self.judge_floor_parseable <= 1, "judge_floor_parseable", "must be in [0, 1]")
        check(0 <= self.judge_floor_accuracy <= 1, "judge_floor_accuracy", "must be in [0, 1]")
        check(self.on_weak_judge in ("stop", "verifier"), "on_weak_judge", "must be stop or verifier")
        check(self.judge_check_decides_on in ("estimate", "lower_bound"), "judge_check_decides_on",
              "must be estimate or lower_bound")

    @property
    def bootstraps_judge(self) -> bool:
        """Whether round 1 teaches the judge from verifier-labelled samples (the verifier judging
        every prompt needs no judge)."""
        return self.bootstrap_judge and self.judge != "verifier"

    def constrained_split(self, data, probe: bool = True) -> tuple[list[int], list[int]]:
        """(bootstrap prompt ids, probe prompt ids): the run's training prompts with constraints, then
        those of `judge_prompt_set_ids`; the last `judge_check_prompts` of them kept for the probe
        (never trained on by the judge). `probe=False`: the run never checks its judge (the
        verifier writes every verdict), so no prompt is held back from the bootstrap."""
        ids = [p["id"] for p in data.run_prompts() if p["constraints"]]
        if self.judge_prompt_set_ids:
            seen = set(ids)
            ids += [p["id"] for p in data.prompts_of_sets(self.judge_prompt_set_ids)
                    if p["constraints"] and p["id"] not in seen]
        k = min(self.judge_check_prompts, len(ids) // 2) if self.judge_check_prompts and probe else 0
        return (ids[:-k] if k else ids), (ids[-k:] if k else [])

    def judge_mode(self, data) -> str:
        """The judging payload's mode this round: verifier / hybrid by choice, verifier when the
        judge check fell below its floor and on_weak_judge says so, else llm."""
        if self.judge == "verifier" or data.metrics.get("judge_check", {}).get("action") == "verifier":
            return "verifier"
        return "hybrid" if self.judge == "hybrid" else "llm"


JUDGES = ("self", "verifier", "hybrid")


def judge_check_plan(kind: str, model: str, votes_field: str,
                     needed: Callable[[PlanInput], bool] | None = None) -> Callable[[PlanInput], list[dict]]:
    """Planner of the judge check stage (see JudgeFields); [] skips it, as does `needed` saying
    that the model judges nothing in this run (the method knows which prompts its judge sees)."""

    def plan(inp: PlanInput) -> list[dict]:
        cfg = inp.config
        _, probe = cfg.constrained_split(inp.data)
        if cfg.judge == "verifier" or not probe or (needed is not None and not needed(inp)):
            return []
        # the probe's answers are the policy's, whatever model judges them
        return [{"prompt_ids": probe, "kind": kind, "model": model if cfg.judge_version_id is None
                 else f"version:{cfg.judge_version_id}", "answer_model": "policy", "samples": 1,
                 "votes": getattr(cfg, votes_field),
                 "max_new_tokens": cfg.judge_max_new_tokens,
                 "floor": {"parseable": cfg.judge_floor_parseable, "accuracy": cfg.judge_floor_accuracy,
                           "decides_on": cfg.judge_check_decides_on},
                 "on_weak": cfg.on_weak_judge}]

    return plan


def judge_bootstrap_items(data, cfg, kinds: tuple[str, ...], roles: tuple[str, ...],
                          probe: bool = True) -> tuple[list[dict], dict]:
    """SFT examples that teach the judge, from this round's samples of `roles` on the bootstrap share
    of the constrained prompts, labelled by the verifier (services/curriculum/judge_data.py)."""
    from services.curriculum.judge_data import judge_examples

    boot, _ = cfg.constrained_split(data, probe)
    prompts = data.prompts(boot)
    samples = [{"messages": prompts[x["prompt_id"]]["messages"], "response": x["text"],
                "constraints": prompts[x["prompt_id"]]["constraints"], "finish_reason": x.get("finish_reason")}
               for role in roles for x in data.samples(role) if x["prompt_id"] in prompts]
    made = judge_examples(samples, kinds=kinds, seed=cfg.seed)
    items = [e for k in kinds for e in made[k]]
    return items, {"labelled_samples": len(samples), **{f"{k}_examples": len(made[k]) for k in kinds}}


def judge_data_errors(check: DataCheck) -> list[dict]:
    """Data check of a self-judged method's judge fields: the judge version and the judge prompt
    sets must be the workspace's, and the sets must hold prompts with verifiable constraints."""
    cfg = check.config
    judge = [cfg.judge_version_id] if cfg.judge_version_id is not None else []
    errors = [{**e, "loc": e["loc"][:-1]} for e in check.missing("model_version", judge, ["config", "judge_version_id"])]
    sets = list(cfg.judge_prompt_set_ids)
    set_errors = check.missing("prompt_set", sets, ["config", "judge_prompt_set_ids"])
    if not set_errors and sets and not any(p["constraints"] for p in check.read_sets(sets)):
        set_errors = [{"loc": ["config", "judge_prompt_set_ids"], "msg": (
            "none of these prompt sets has a prompt with constraints; judge prompt sets teach the judge "
            "through the verifier, which needs IFEval-style constraints (see `autodidact curriculum`)")}]
    return errors + set_errors


def sound_answer(text: str, prompt: dict) -> bool:
    """`sound` (services/judging/degeneration.py) of an answer to a stored prompt: its last message
    is the question, its constraints (if any) what the verifier checks."""
    from services.judging.degeneration import sound

    return sound(text, prompt["messages"][-1]["content"], prompt.get("constraints"))


def balance_lengths(pairs: list[dict], max_share: float) -> tuple[list[dict], dict]:
    """Keep at most `max_share` of the pairs (among those whose answers differ in word count) on the
    side where the rejected answer is the longer, or where the chosen one is; from the side over the
    share, the pairs with the largest word-count gap go first (the pairs where length most likely
    decided the verdict). The order of the kept pairs is unchanged.

    When failing answers are the long ones (they ramble or run to the limit), nearly every pair
    rejects the longer answer and DPO learns "shorter" however the ties were broken; answers then
    shrink and drop what an instruction asks for at their end. 1.0 keeps every pair.
    """
    def gap(p: dict) -> int:
        return len(p["rejected"].split()) - len(p["chosen"].split())

    rej_longer = [i for i, p in enumerate(pairs) if gap(p) > 0]
    cho_longer = [i for i, p in enumerate(pairs) if gap(p) < 0]
    major, minor = (rej_longer, cho_longer) if len(rej_longer) >= len(cho_longer) else (cho_longer, rej_longer)
    if max_share >= 1 or not major:
        return pairs, {"dropped_for_length": 0}
    # m / (m + k) <= share  <=>  m <= share * k / (1 - share)
    allowed = int(max_share * len(minor) / (1 - max_share) + 1e-9)
    drop = set(sorted(major, key=lambda i: (-abs(gap(pairs[i])), i))[:max(0, len(major) - allowed)])
    return [p for i, p in enumerate(pairs) if i not in drop], {"dropped_for_length": len(drop)}


END_CHARS = 24  # how much of the rejected answer's ending (whitespace collapsed) marks where it ended


def is_continuation(chosen: str, rejected: str) -> bool:
    """Whether `chosen` writes the rejected answer's ending and then goes on (whitespace aside): the
    rejected text with more appended, or wrapped (a quote, a JSON string value) so that something
    still follows where the rejected answer ended its turn. The ending is the rejected text's last
    `END_CHARS` characters, as written or as escaped inside a JSON string."""
    import json

    from services.refinement.search import normalise

    c, r = normalise(chosen), normalise(rejected)
    if not r:
        return False
    if len(c) > len(r) and c.startswith(r):
        return True
    for form in {r, normalise(json.dumps(rejected.strip())[1:-1])}:
        tail = form[-END_CHARS:]
        at = c.rfind(tail)
        if at >= 0 and at + len(tail) < len(c):
            return True
    return False


def drop_continuations(pairs: list[dict], cut: set[tuple[int, int]] = frozenset()) -> tuple[list[dict], dict]:
    """Drop the pairs whose chosen answer continues the rejected one (`is_continuation`), unless
    the rejected answer was cut at the token limit (`cut`: its (prompt_id, index) keys).

    DPO on such a pair has one contrast at the end: end of turn after the rejected text against any
    more text. Scored, the rejected end lowers ending after a finished answer, and a model trained on
    many of them keeps writing after it is done (loops to the token limit); unscored, the chosen
    side's added ending is raised wherever an answer ends. SPaR's mechanical fixes that append (a
    keyword sentence, the end phrase, a postscript, placeholders) make the first kind, and the ones
    that wrap (quotes, a JSON string) the second: a closing `"` learned as an ending on prompts that
    never asked for quotes (docs/results.md). A cut rejected answer has no end of turn to lower
    (the trainer leaves a cut answer's end unscored), so its continuation only raises the finished
    text and is kept. The prefix test is on characters, as tokens are ("4" → "42" continues)."""
    kept = [p for p in pairs
            if (p["prompt_id"], p["index"]) in cut or not is_continuation(p["chosen"], p["rejected"])]
    return kept, {"dropped_as_continuation": len(pairs) - len(kept)}


def pair_length_counts(pairs: list[dict]) -> dict:
    """How often the rejected answer is the longer one, and both sides' mean word counts: the
    length skew a round's pairs teach (DPO learns "shorter" from pairs that all reject the longer)."""
    words = [(len(p["chosen"].split()), len(p["rejected"].split())) for p in pairs]
    return {"rejected_longer": sum(r > c for c, r in words),
            "chosen_words_mean": round(sum(c for c, _ in words) / len(words), 1) if words else None,
            "rejected_words_mean": round(sum(r for _, r in words) / len(words), 1) if words else None}


TRAINER_FIELDS = tuple(f.name for f in dataclasses.fields(TrainerFields)
                       if f.name not in ("train", "eval_judge_samples", "on_regression", "max_degenerate_rate",
                                         "max_limit_rate_rise", "tracking"))


def round_learning_rate(cfg: Any, round_number: int) -> float:
    """The actor's rate in round t of a method with a later rate (SPIN, SPaR): `later_learning_rate`
    from round `later_from_round` on when it is set, `learning_rate` before it and otherwise."""
    later = cfg.later_learning_rate
    return later if later is not None and round_number >= cfg.later_from_round else cfg.learning_rate


def trainer_config(cfg: Any, **settings: Any):
    """A TrainConfig from a method config: its shared trainer fields, the method's `settings`, and
    the user's `train` overrides last. Errors name the method config's `train` field."""
    from services.training.config import TrainConfig

    base = {f: getattr(cfg, f) for f in TRAINER_FIELDS}
    if hasattr(cfg, "warmup_ratio"):
        base["warmup_ratio"] = cfg.warmup_ratio
    overrides = getattr(cfg, "train", {}) or {}
    unknown = set(overrides) - set(TrainConfig.__dataclass_fields__)
    check(not unknown, "train", f"unknown trainer fields {sorted(unknown)}")
    try:
        from services.methods.bounds import check_numbers

        check_numbers(None, values=overrides, cls=TrainConfig)
    except ValueError as exc:
        check(False, "train", str(exc))
    check(overrides.get("lora", True) is not False, "train",
          "lora: false (full fine-tuning) is supported by the trainer but runs publish and chain LoRA "
          "adapters; leave lora on for runs")
    try:
        return TrainConfig(**{**base, **settings, **overrides})
    except (TypeError, ValueError) as exc:
        check(False, "train", str(exc))
