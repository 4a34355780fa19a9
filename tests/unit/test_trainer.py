"""The trainer on a tiny random model: it learns, resumes exactly, continues adapters, scores exactly,
and launch.py builds the right `accelerate launch` command."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from services.training import launch
from services.training.config import TrainConfig
from services.training.logprobs import collate, length_batches
from services.training.trainer import sequence_logprobs, train_pairs, train_sft
from shared.modeling import load_tokenizer, prompt_ids, response_ids

PROMPTS = ["write a short poem about the sea", "list three fruits", "what is two plus two ?",
           "explain why the sky is blue", "translate hello into french", "answer with yes or no"]
CHOSEN = ["the sea is blue .", "apple , banana , cherry", "four .", "the sky is blue", "bonjour", "yes"]
REJECTED = ["no no no", "the lazy dog", "five", "because", "hello hello", "the quick brown fox jumps"]
PAIRS = [{"messages": [{"role": "user", "content": p}], "chosen": c, "rejected": r}
         for p, c, r in zip(PROMPTS, CHOSEN, REJECTED)]
FAST = {"learning_rate": 5e-3, "epochs": 2, "batch_size": 2, "warmup_ratio": 0.0, "lora_r": 4, "lora_alpha": 8}


class Stop(Exception):
    pass






def _margin(tiny_model, adapter):
    ex = [{"messages": p["messages"], "response": p[k]} for p in PAIRS for k in ("chosen", "rejected")]
    lp = sequence_logprobs(base_model=tiny_model, adapter=adapter, examples=ex)
    return sum(lp[0::2]) / len(PAIRS) - sum(lp[1::2]) / len(PAIRS), lp


def _adapter(path):
    return load_file(str(path / "adapter_model.safetensors"))


def test_pair_training_changes_lora_and_raises_margin(tiny_model, tmp_path):
    steps = []
    summary = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "out",
                          config=TrainConfig(**FAST), on_step=steps.append)
    weights = _adapter(tmp_path / "out")
    lora_b = [w for n, w in weights.items() if "lora_B" in n]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)  # a fresh LoRA starts with B = 0
    before, _ = _margin(tiny_model, None)
    after, _ = _margin(tiny_model, str(tmp_path / "out"))
    assert after > before + 0.5
    assert summary["steps"] == len(steps) == 6 and summary["resumed_from_step"] == 0
    assert summary["reward_margin"] > 0 and summary["pairs_per_s"] > 0
    assert set(steps[0]) >= {"step", "epoch", "loss", "chosen_reward", "rejected_reward", "margin",
                             "accuracy", "lr", "tokens_per_s"}
    assert steps[0]["margin"] == pytest.approx(0.0, abs=1e-6)  # policy = reference before step 1
    assert steps[-1]["margin"] > 0


@pytest.mark.parametrize("loss,extra", [("ipo", {}), ("hinge", {}), ("sigmoid", {"sft_weight": 0.1, "grad_accum": 2})])
def test_other_losses_train(tiny_model, tmp_path, loss, extra):
    summary = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "out",
                          config=TrainConfig(**{**FAST, "loss": loss, "beta": 0.5, **extra}))
    assert summary["reward_margin"] > 0


def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted(tiny_model, tmp_path):
    cfg = TrainConfig(**{**FAST, "epochs": 3, "checkpoint_every": 2})
    full = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "full", config=cfg)

    def crash_at_3(m):
        if m["step"] == 3:
            raise Stop()

    with pytest.raises(Stop):
        train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "out", config=cfg,
                    checkpoint_dir=tmp_path / "ckpt", on_step=crash_at_3)
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["step-0000002"]
    assert not (tmp_path / "out").exists()
    steps = []
    resumed = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "out", config=cfg,
                          checkpoint_dir=tmp_path / "ckpt", on_step=steps.append)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == full["steps"] == 9
    assert [m["step"] for m in steps] == list(range(3, 10))
    a, b = _adapter(tmp_path / "full"), _adapter(tmp_path / "out")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["loss"] == pytest.approx(full["loss"], abs=1e-6)

    # other data: the checkpoint is not used
    other = train_pairs(base_model=tiny_model, pairs=PAIRS[:4], out_dir=tmp_path / "other", config=cfg,
                        checkpoint_dir=tmp_path / "ckpt")
    assert other["resumed_from_step"] == 0


def test_init_adapter_continues_and_ref_adapter_is_the_reference(tiny_model, tmp_path):
    train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "a1", config=TrainConfig(**FAST))
    a1 = str(tmp_path / "a1")
    cfg = TrainConfig(**{**FAST, "beta": 0.1, "epochs": 1, "batch_size": 6})
    _, base_lp = _margin(tiny_model, None)
    _, a1_lp = _margin(tiny_model, a1)
    expected = 0.1 * (sum(a1_lp[0::2]) - sum(base_lp[0::2])) / len(PAIRS)

    steps = []  # reference = base: before the first update the reward is that of a1 over the base
    train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "a2", config=cfg, init_adapter=a1,
                on_step=steps.append)
    assert steps[0]["chosen_reward"] == pytest.approx(expected, abs=1e-4)
    assert abs(expected) > 1e-2
    assert set(_adapter(tmp_path / "a2")) == set(_adapter(tmp_path / "a1"))

    steps = []  # SPIN: start from and compare against the previous iterate
    train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "a3", config=cfg, init_adapter=a1,
                ref_adapter=a1, on_step=steps.append)
    assert steps[0]["chosen_reward"] == pytest.approx(0.0, abs=1e-5)


def test_sequence_logprobs_equals_full_logits(tiny_model):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ex = [{"messages": p["messages"], "response": p["chosen"]} for p in PAIRS]
    ours = sequence_logprobs(base_model=tiny_model, adapter=None, examples=ex, config=TrainConfig(logprob_chunk=3))
    for e, value in zip(ex, ours):
        p, r = prompt_ids(tok, e["messages"]), response_ids(tok, e["response"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([p + r])).logits[0]
        logp = torch.log_softmax(logits.float(), -1)[len(p) - 1: -1].gather(1, torch.tensor(r)[:, None]).sum()
        assert value == pytest.approx(logp.item(), abs=1e-4)


def test_sft_trains_and_full_finetune_writes_a_model(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    ex = [{"messages": p["messages"], "response": p["chosen"]} for p in PAIRS]
    steps = []
    train_sft(base_model=tiny_model, examples=ex, out_dir=tmp_path / "sft",
              config=TrainConfig(**{**FAST, "epochs": 3}), on_step=steps.append)
    assert steps[-1]["loss"] < steps[0]["loss"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "stale.txt").write_text("left by a crashed run")
    train_sft(base_model=tiny_model, examples=ex, out_dir=tmp_path / "full",
              config=TrainConfig(**{**FAST, "lora": False, "learning_rate": 1e-3, "epochs": 1}))
    assert not (tmp_path / "full" / "stale.txt").exists()  # replaced whole, not merged into
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "full"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_length_batches_cover_everything_once_with_little_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    batches = length_batches(lengths, 8, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert batches == length_batches(lengths, 8, seed=0) != length_batches(lengths, 8, seed=1)
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    assert waste < 0.1 * sum(lengths)


def test_collate_marks_response_positions():
    batch = collate([([1, 2, 3], [4, 5]), ([6], [7, 8, 9])], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4], [6, 7, 8, 0]]
    assert batch.positions.tolist() == [2, 3, 4, 5, 6] and batch.targets.tolist() == [4, 5, 7, 8, 9]
    assert batch.seq_index.tolist() == [0, 0, 1, 1, 1] and batch.n_tokens.tolist() == [2, 3]


@pytest.mark.parametrize("gpus,mode,cpu,present,absent", [
    (4, "ddp", False, ["--multi_gpu", "--mixed_precision", "bf16"], ["--use_fsdp", "--cpu"]),
    (8, "fsdp", False, ["--use_fsdp", "FULL_SHARD", "TRANSFORMER_BASED_WRAP", "--fsdp_use_orig_params"],
     ["--multi_gpu"]),
    (2, "ddp", True, ["--multi_gpu", "no"], ["--use_fsdp", "bf16", "--cpu"]),
    (1, "ddp", True, ["--cpu"], ["--use_fsdp", "bf16", "--multi_gpu"]),
    (1, "none", False, [], ["--multi_gpu", "--use_fsdp"]),
])
def test_build_launch_command(gpus, mode, cpu, present, absent):
    cmd = launch.build_launch_command("/tmp/spec.json", gpus, mode, cpu=cpu, port=29555)
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == str(gpus)
    assert cmd[-4:] == ["--module", "services.training.launch", "--spec", "/tmp/spec.json"]
    assert all(x in cmd for x in present) and not any(x in cmd for x in absent)
    with pytest.raises(ValueError, match="num_gpus"):
        launch.build_launch_command("/tmp/spec.json", 0, mode)


def test_should_launch(monkeypatch):
    monkeypatch.delenv(launch.CHILD_ENV, raising=False)
    assert launch.should_launch(TrainConfig(distributed="ddp"))
    assert launch.should_launch(TrainConfig()) == (torch.cuda.device_count() > 1)
    monkeypatch.setenv(launch.CHILD_ENV, "1")
    assert not launch.should_launch(TrainConfig(distributed="ddp"))


def test_launch_entry_point_runs_a_spec(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(launch.CHILD_ENV, "1")  # as inside `accelerate launch`
    spec = launch.write_spec(tmp_path / "job", kind="pairs", base_model=tiny_model, items=PAIRS,
                             out_dir=tmp_path / "out", config=TrainConfig(**{**FAST, "distributed": "ddp"}))
    launch.main(["--spec", str(spec)])
    result = json.loads((tmp_path / "job" / "result.json").read_text())
    metrics = (tmp_path / "job" / "metrics.jsonl").read_text().splitlines()
    assert result["steps"] == len(metrics) == 6 and (tmp_path / "out" / "adapter_config.json").exists()


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process(tiny_model, tmp_path, monkeypatch, fresh_settings):
    """Two gloo processes under `accelerate launch` compute the same update as one process."""
    monkeypatch.delenv(launch.CHILD_ENV, raising=False)
    monkeypatch.setenv("AUTODIDACT_TRAIN_PROCESSES", "2")
    cfg = dict(FAST, epochs=1, batch_size=1, grad_accum=1, device="cpu")
    steps = []
    multi = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "ddp",
                        config=TrainConfig(**cfg, distributed="ddp"), on_step=steps.append)
    single = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "one",
                         config=TrainConfig(**{**cfg, "grad_accum": 2}))  # same micro-batches per step
    assert multi["steps"] == single["steps"] == len(steps) == 3
    a, b = _adapter(tmp_path / "ddp"), _adapter(tmp_path / "one")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_guard_stops_a_runaway_round_and_keeps_the_last_good_weights(tiny_model, tmp_path):
    """A learning rate far too high drives the policy away from its reference; the KL ceiling stops
    training at the first step that measures above it and keeps the previous step's weights."""
    steps = []
    wild = {**FAST, "learning_rate": 0.05, "epochs": 6, "max_kl": 0.05, "max_reward_margin": 0}
    summary = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "wild",
                          config=TrainConfig(**wild), on_step=steps.append)
    stop = summary["guard_stop"]
    assert stop["metric"] == "kl" and stop["value"] > 0.05 and stop["ceiling"] == 0.05
    assert stop["step"] < summary["steps"]  # stopped before the planned end
    # step k measures the weights after k-1 updates: the breach at step k discards update k-1
    assert len(steps) == stop["step"] - 1 and stop["kept_updates"] == stop["step"] - 2
    assert all(m["kl"] <= 0.05 for m in steps)
    # the published weights are those the last recorded step measured: re-scoring them gives a KL
    # estimate within the ceiling on the same pairs (the reference is the bare base here)
    ex = [{"messages": p["messages"], "response": p["rejected"]} for p in PAIRS]
    ref = sequence_logprobs(base_model=tiny_model, adapter=None, examples=ex)
    kept = sequence_logprobs(base_model=tiny_model, adapter=str(tmp_path / "wild"), examples=ex)
    tok = load_tokenizer(tiny_model)
    n = [len(response_ids(tok, p["rejected"])) for p in PAIRS]
    assert sum((r - k) / t for r, k, t in zip(ref, kept, n)) / len(PAIRS) < 0.5

    # the same run with the guards off trains every step and reports no stop
    off = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "off",
                      config=TrainConfig(**{**wild, "max_kl": 0}))
    assert "guard_stop" not in off and off["steps"] == summary["steps"]


def test_guard_on_reward_margin_and_validation(tiny_model, tmp_path):
    summary = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "m",
                          config=TrainConfig(**{**FAST, "learning_rate": 0.05, "epochs": 6, "max_kl": 0,
                                                "max_reward_margin": 0.1}))
    assert summary["guard_stop"]["metric"] == "reward_margin"
    with pytest.raises(ValueError, match="max_kl"):
        TrainConfig(max_kl=-1)


@pytest.mark.parametrize("kind,variant", [("pairs", {"share_prompt": False}), ("pairs", {"forward_tokens": 24}),
                                          ("pairs", {"forward_tokens": 1}), ("sft", {"forward_tokens": 16})])
def test_shared_prompts_and_split_forwards_train_the_same_weights(tiny_model, tmp_path, kind, variant):
    """Prompt sharing and cutting a batch into several forwards change how the work is laid out,
    not the update: the adapters after training agree with the plain layout's."""
    def run(name, **cfg):
        config = TrainConfig(**{**FAST, "batch_size": 3, "grad_accum": 2, "seed": 3, **cfg})
        if kind == "pairs":
            summary = train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / name, config=config)
        else:
            examples = [{"messages": p["messages"], "response": p["chosen"]} for p in PAIRS]
            summary = train_sft(base_model=tiny_model, examples=examples, out_dir=tmp_path / name, config=config)
        return summary, _adapter(tmp_path / name)

    plain_summary, plain = run("plain", share_prompt=False, forward_tokens=0)
    summary, other = run("other", **variant)
    assert summary["steps"] == plain_summary["steps"] == 2
    moved = max((plain[n] - _adapter_init(plain, n)).abs().max().item() for n in plain)
    assert moved > 1e-3  # training changed the adapter, so agreement below means something
    worst = max((plain[n] - other[n]).abs().max().item() for n in plain)
    assert worst < 1e-5, worst


def _adapter_init(weights, name):
    return torch.zeros_like(weights[name]) if "lora_B" in name else weights[name]


def test_split_by_tokens_keeps_every_item_once_within_the_budget():
    from services.training.trainer import _split_by_tokens

    row_len = [(1, 10), (1, 30), (2, 12), (1, 5), (2, 40)]
    pieces = _split_by_tokens([0, 1, 2, 3, 4], row_len, 48)
    assert sorted(i for p in pieces for i in p) == [0, 1, 2, 3, 4]
    for piece in pieces:
        rows = sum(row_len[i][0] for i in piece)
        assert len(piece) == 1 or rows * max(row_len[i][1] for i in piece) <= 48
    assert [4] in pieces  # 2 rows x 40 is above the budget alone: a piece of its own
    assert _split_by_tokens([3, 1], row_len, 0) == [[3, 1]]
