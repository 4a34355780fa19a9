"""Training tasks reuse the bare base that an earlier task handed back (shared.modeling's spares)
instead of loading it again, and only when it is still the unchanged base."""
from __future__ import annotations

import torch
from safetensors.torch import load_file

from services.training.config import TrainConfig
from services.training.trainer import train_pairs, train_sft
from shared import modeling
from shared.modeling import borrow_base, give_back_base

PAIRS = [{"messages": [{"role": "user", "content": p}], "chosen": c, "rejected": r}
         for p, c, r in [("list three fruits", "apple , banana", "the lazy dog"),
                         ("what is two plus two ?", "four .", "five"),
                         ("explain why the sky is blue", "the sky is blue", "because")]]
FAST = {"learning_rate": 5e-3, "epochs": 1, "batch_size": 2, "warmup_ratio": 0.0, "lora_r": 4, "lora_alpha": 8}


def _loads(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = modeling.load_base

    def counting(name, *a, **kw):
        if not kw.get("cache", True):
            calls.append(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(modeling, "load_base", counting)
    return calls


def test_only_an_unchanged_bare_base_is_kept(tiny_model, monkeypatch):
    modeling._spares.clear()
    loads = _loads(monkeypatch)
    model = borrow_base(tiny_model, "cpu")
    assert give_back_base(tiny_model, model, "cpu")
    assert borrow_base(tiny_model, "cpu") is model and loads == [tiny_model]
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert not give_back_base(tiny_model, model, "cpu"), "changed weights must not be handed out again"
    assert borrow_base(tiny_model, "cpu") is not model and len(loads) == 2
    from peft import LoraConfig, get_peft_model

    wrapped = borrow_base(tiny_model, "cpu")
    get_peft_model(wrapped, LoraConfig(r=2, target_modules=["q_proj"]))
    assert not give_back_base(tiny_model, wrapped, "cpu"), "a base with adapter layers in it is not bare"


def test_second_training_task_reuses_the_base_and_trains_the_same(tiny_model, tmp_path, monkeypatch):
    modeling._spares.clear()
    loads = _loads(monkeypatch)
    cfg = TrainConfig(**FAST)
    train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "a", config=cfg)
    train_pairs(base_model=tiny_model, pairs=PAIRS, out_dir=tmp_path / "b", config=cfg)
    assert loads == [tiny_model], "the second task should borrow the base the first one handed back"
    a, b = (load_file(tmp_path / d / "adapter_model.safetensors") for d in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Full fine-tuning changes the base's weights: that copy is not handed back.
    train_sft(base_model=tiny_model, examples=[{"messages": p["messages"], "response": p["chosen"]} for p in PAIRS],
              out_dir=tmp_path / "full", config=TrainConfig(**{**FAST, "lora": False}))
    assert not modeling._spares
