"""ReST-EM (Singh et al., 2023, arXiv 2312.06585): sample, keep what the verifier accepts, fine-tune.

Round t: E-step — N samples per prompt from θ(t-1), a binary reward from a programmatic check
(verifiable constraints all satisfied, or the exact answer); keep at most K correct responses per
prompt. M-step — SFT on the kept responses, always starting again from the base θ0.

Departures: LoRA adapters by default (a fresh adapter on θ0 each round, as the paper restarts from
the base); identical correct responses of one prompt are kept once, since duplicates only reweight
the data; a response cut at `max_new_tokens` earns no reward (`keep_truncated` turns that off): the
verifier can pass a prefix of an answer that never ended, and fine-tuning on such prefixes taught
Gemma 3 270M to run to the limit (docs/results.md: 29 of 91 correct samples were cut, and the
round's answers cut at the limit rose from 18 % to 44 %). Nor does a correct response that is
unsound (`sound`: junk tokens, runaway repetition, a line written three times, a new chat turn begun
inside it, or, where the prompt has constraints, the prompt restated or echoed; `keep_unsound` turns
that off): the IFEval checks look only at what they count, so "…the oxygen animals breathe.\nmodel\n…"
or an answer with "getMainUI" glued to a sentence passes them. In a bench round 1 (400 prompts, 4
samples each) 90 of the 532 correct answers that ended were such; without them the round gained as
much (+6.9 against +7.4 points, the same samples) and left no junk in held-out answers
(docs/results.md). The paper's learning rates are for full fine-tuning of PaLM 2; ours suit LoRA on
small models.

`repair_failed` (ours, off by default): a prompt with constraints none of whose samples was kept
contributes one repaired answer instead — the first of its failed answers that ended, is sound
apart from its broken instructions (degeneration.editable) and whose broken instructions all have a
mechanical fix (services/curriculum/refinements.py, SPaR-hybrid's edits),
kept only when the verifier passes the fix. A policy that never writes a whole answer in capitals
never samples a correct one, so the E-step alone can never teach it (every measured run: 0 of the
held-out case prompts); the repair shows it its own answer written the way the prompt asked.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from services.methods.base import (
    DataCheck, Recipe, SamplingFields, Stage, TrainerFields, check, evaluation_stages, register, shard_prompts, single,
    sound_answer,
)
from services.methods.jobs import sft_from_base_job


@dataclass
class RestEMConfig(SamplingFields, TrainerFields):
    samples_per_prompt: int = 32  # N [32 for math, 64 for code]
    max_correct_per_prompt: int = 10  # K [10]
    temperature: float = 0.7  # [0.7]
    top_k: int = 40  # [40]
    top_p: float = 1.0
    max_new_tokens: int = 256
    keep_truncated: bool = False  # reward responses cut at max_new_tokens too (see the module docstring)
    keep_unsound: bool = False  # keep correct responses with junk, a leaked turn, a restated prompt (docstring)
    repair_failed: bool = False  # prompts without a kept sample get one verified mechanical fix (docstring)
    learning_rate: float = 1e-4
    epochs: int = 2
    SAMPLES_RANGE = (1, 256)

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        self.check_sampling_fields()
        check(self.max_correct_per_prompt >= 1, "max_correct_per_prompt", "must be >= 1")
        check(self.learning_rate > 0, "learning_rate", "must be > 0")
        check(type(self.keep_truncated) is bool, "keep_truncated", "must be true or false")
        check(type(self.keep_unsound) is bool, "keep_unsound", "must be true or false")
        self.train_config(1, 1)

    def train_config(self, round_number: int, total_rounds: int):
        from services.methods.base import trainer_config

        return trainer_config(self, loss="sft", learning_rate=self.learning_rate)


def select_correct(samples: list[dict], k: int, keep_truncated: bool = False,
                   sound: Callable[[dict], bool] | None = None) -> tuple[list[dict], dict]:
    """The M-step's data: at most k distinct correct responses per prompt, lowest index first.

    samples: [{"prompt_id", "index", "text", "reward", "finish_reason" (optional)}] with reward
    1.0 / 0.0 / None (uncheckable). A correct response cut at the token limit (finish_reason
    "length") is not kept unless `keep_truncated`; with `sound` given, neither is one it refuses.
    Returns (kept samples, counts) — counts of correct, kept, prompts with any kept sample, correct
    responses dropped as truncated and (with `sound`) as unsound.
    """
    from services.judging.degeneration import hit_limit
    from services.refinement.search import normalise

    kept, seen = [], {}
    correct = truncated = unsound = 0
    for s in sorted(samples, key=lambda s: (s["prompt_id"], s["index"])):
        if s.get("reward") != 1.0:
            continue
        correct += 1
        if hit_limit(s.get("finish_reason")) and not keep_truncated:
            truncated += 1
            continue
        if sound is not None and not sound(s):
            unsound += 1
            continue
        texts = seen.setdefault(s["prompt_id"], set())
        norm = normalise(s["text"])
        if len(texts) >= k or norm in texts:
            continue
        texts.add(norm)
        kept.append(s)
    counts = {"correct": correct, "kept": len(kept), "prompts_with_correct": len(seen), "truncated": truncated}
    return kept, counts | ({"unsound": unsound} if sound is not None else {})


def repairs(samples: list[dict], prompts: dict[int, dict]) -> list[dict]:
    """One repaired answer per prompt of `prompts` that has constraints: the verified mechanical fix
    of its first failed (reward 0.0) answer that ended, is `editable` (services/judging/degeneration.py:
    sound apart from its broken instructions) and has a fix, lowest index first.

    samples: as for select_correct; prompts: {prompt_id: prompt dict} of the prompts to repair.
    Returns [{"prompt_id", "index", "text"}] with the fixed text."""
    from services.curriculum.refinements import refine
    from services.judging.degeneration import editable, hit_limit
    from services.refinement.search import normalise

    failed: dict[int, list[dict]] = {}
    for s in sorted(samples, key=lambda s: (s["prompt_id"], s["index"])):
        if s["prompt_id"] in prompts and s.get("reward") == 0.0 and not hit_limit(s.get("finish_reason")):
            failed.setdefault(s["prompt_id"], []).append(s)
    out = []
    for pid, prompt in sorted(prompts.items()):
        if not prompt.get("constraints"):
            continue
        for s in failed.get(pid, []):
            if not editable(s["text"], prompt["messages"][-1]["content"], prompt["constraints"]):
                continue
            fixed = refine(s["text"], prompt["constraints"], prompt["messages"][-1]["content"])
            if fixed and normalise(fixed) != normalise(s["text"]):
                out.append({"prompt_id": pid, "index": s["index"], "text": fixed})
                break
    return out


def check_data(check: DataCheck) -> list[dict]:
    if not any(p["constraints"] or p["answer"] for p in check.prompts):
        return [{"loc": ["prompt_set_ids"], "msg": "ReST-EM needs a checkable reward: give prompts "
                 "`constraints` or an `answer`"}]
    return []


def training_job(data, cfg: RestEMConfig, role: str):
    """M-step: SFT from the base on the verified samples of the round."""
    from services.judging.degeneration import hit_limit

    if role != "policy":
        return None
    rewards = {j["sample_id"]: j["score"] for j in data.judgments("verifier", role="policy") if j["vote_index"] == 0}
    samples = [{**x, "reward": rewards.get(x["id"])} for x in data.samples("policy")]
    prompts = data.prompts(sorted({x["prompt_id"] for x in samples}))
    kept, stats = select_correct(samples, cfg.max_correct_per_prompt, cfg.keep_truncated,
                                 None if cfg.keep_unsound else lambda x: sound_answer(x["text"], prompts[x["prompt_id"]]))
    solved = {k["prompt_id"] for k in kept}
    repaired: list[dict] = []
    if cfg.repair_failed:
        repaired = repairs(samples, {pid: p for pid, p in prompts.items() if pid not in solved})
        stats["repaired"] = len(repaired)
    # with keep_truncated a cut answer trains as the prefix it is, without an end-of-turn it never wrote
    items = [{"messages": prompts[k["prompt_id"]]["messages"], "response": k["text"],
              "ended": not hit_limit(k.get("finish_reason"))} for k in kept]
    items += [{"messages": prompts[r["prompt_id"]]["messages"], "response": r["text"], "ended": True}
              for r in repaired]
    return sft_from_base_job(data, items, cfg.train_config(data.round_number, data.total_rounds),
                             {**stats, "samples": len(samples)})


def _stages(cfg: RestEMConfig, has_eval: bool) -> list[Stage]:
    return [
        Stage("generate", "generation.generate_shard", shard_prompts(role="policy")),
        Stage("verify", "judging.verify_shard", shard_prompts(role="policy")),
        Stage("train", "training.train_round", single),
    ] + evaluation_stages(has_eval)


RECIPE = register(Recipe(method="rest_em", config_cls=RestEMConfig, stages=_stages, check_data=check_data,
                         training_job=training_job))
