"""Adding a method is one recipe: this file defines "best-of-n SFT" (sample n responses per prompt,
keep the verifier's best one per prompt, fine-tune on those) with nothing but the recipe API,
registers it, and runs it end to end on the tiny model in embedded mode (SQLite, inline tasks).
No service module knows the method: the generic generation, verification and training tasks
run it through the recipe's stages and hooks."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors.torch import load_file

from services.methods import DataCheck, Recipe, Stage, register
from services.methods.base import SamplingFields, TrainerFields, check, shard_prompts, single, trainer_config
from services.training.job import TrainJob

N_PROMPTS, N = 4, 3


@dataclass
class BestOfNConfig(SamplingFields, TrainerFields):
    samples_per_prompt: int = N
    learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        self.check_trainer_fields()
        self.check_sampling_fields()
        check(self.learning_rate > 0, "learning_rate", "must be > 0")

    def train_config(self, round_number: int, total_rounds: int):
        return trainer_config(self, loss="sft", learning_rate=self.learning_rate)


def best_per_prompt(samples: list[dict], scores: dict[int, float | None]) -> list[dict]:
    """Per prompt, the sample with the highest verifier score (lowest index on a tie); samples the
    verifier could not check are left out."""
    best: dict[int, dict] = {}
    for x in samples:
        score = scores.get(x["id"])
        if score is None:
            continue
        kept = best.get(x["prompt_id"])
        if kept is None or score > scores[kept["id"]]:
            best[x["prompt_id"]] = x
    return [best[p] for p in sorted(best)]


def check_data(chk: DataCheck) -> list[dict]:
    if not any(p["constraints"] for p in chk.prompts):
        return [{"loc": ["prompt_set_ids"], "msg": "best-of-n SFT needs prompts with `constraints`"}]
    return []


def training_job(data, cfg: BestOfNConfig, role: str):
    samples = data.samples("policy")
    scores = {j["sample_id"]: j["score"] for j in data.judgments("verifier", role="policy")}
    kept = best_per_prompt(samples, scores)
    prompts = data.prompts([x["prompt_id"] for x in kept])
    return TrainJob(kind="sft", items=[{"messages": prompts[x["prompt_id"]]["messages"], "response": x["text"]}
                                       for x in kept],
                    tcfg=cfg.train_config(data.round_number, data.total_rounds), key_round=data.round_number,
                    role="policy", parent_id=data.base_version_id,
                    stats={"samples": len(samples), "kept": len(kept)})


def _stages(cfg: BestOfNConfig, has_eval: bool) -> list[Stage]:
    return [Stage("generate", "generation.generate_shard", shard_prompts(role="policy")),
            Stage("verify", "judging.verify_shard", shard_prompts(role="policy")),
            Stage("train", "training.train_round", single)]


RECIPE = Recipe(method="best_of_n_sft", config_cls=BestOfNConfig, stages=_stages, check_data=check_data,
                training_job=training_job)


def test_best_per_prompt_keeps_the_top_score_and_skips_unchecked():
    samples = [{"id": i, "prompt_id": i // 3, "index": i % 3} for i in range(6)]
    scores = {0: 0.0, 1: 1.0, 2: 1.0, 3: None, 4: None, 5: None}
    assert [x["id"] for x in best_per_prompt(samples, scores)] == [1]


@pytest.fixture
def embedded_db(tmp_path):
    from services import embedded
    from shared.config import get_settings

    embedded.configure(tmp_path / "extra.db", tmp_path / "artifacts")
    yield tmp_path
    get_settings.cache_clear()  # back to the environment's settings for the other tests


def test_an_extra_recipe_runs_end_to_end_without_touching_a_service(tiny_model, embedded_db):
    from services import embedded
    from services.methods.runs import RunInvalid
    from shared import crud
    from shared.db import session_scope
    from shared.models import Judgment, ModelVersion, Sample
    from sqlmodel import select

    register(RECIPE)
    prompts = embedded_db / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"name {i} colours", "constraints": [
        {"id": "punctuation:no_comma", "kwargs": {}}]}) + "\n" for i in range(N_PROMPTS)))
    config = {"max_new_tokens": 12, "epochs": 1, "batch_size": 2, "lora_r": 4}
    with pytest.raises(RunInvalid, match="samples_per_prompt"):  # the recipe's config is validated
        embedded.create_run(method="best_of_n_sft", prompts=prompts, model=tiny_model, rounds=1,
                            config={**config, "samples_per_prompt": 0})

    run_id = embedded.create_run(method="best_of_n_sft", prompts=prompts, model=tiny_model, rounds=1, config=config)
    embedded.drive(run_id, show_progress=False)

    with session_scope() as s:
        run = crud.get_run(s, run_id=run_id)
        assert run.status == "succeeded", run.error
        (rnd,) = crud.rounds_of_run(s, run_id=run_id)
        assert {k: v["status"] for k, v in rnd.stages.items()} == {"generate": "succeeded", "verify": "succeeded",
                                                                    "train": "succeeded"}
        samples = s.exec(select(Sample).where(Sample.round_id == rnd.id)).all()
        assert len(samples) == N_PROMPTS * N
        verdicts = s.exec(select(Judgment).where(Judgment.kind == "verifier",
                                                 Judgment.sample_id.in_([x.id for x in samples]))).all()
        assert len(verdicts) == N_PROMPTS * N and all(v.score in (0.0, 1.0) for v in verdicts)
        version = s.get(ModelVersion, rnd.produced_version_id)
        assert version.key == f"run:{run_id}:round:1:policy" and version.kind == "adapter"
        assert version.metrics["kept"] == version.metrics["examples"] == N_PROMPTS
        assert version.metrics["samples"] == N_PROMPTS * N
    weights = load_file(str(Path(version.uri) / "adapter_model.safetensors"))
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # LoRA B starts at zero: training moved it
