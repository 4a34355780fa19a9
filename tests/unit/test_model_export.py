"""A version exported as a merged transformers directory (services/training/export.py): plain
`from_pretrained` loads it, its logits equal base + adapter, and its card names method and metrics."""
from __future__ import annotations

import json

import pytest
import torch

EVAL = {"n": 40, "prompt_strict_acc": 0.425, "prompt_loose_acc": 0.5, "instruction_strict_acc": 0.6,
        "instruction_loose_acc": 0.65, "ci95": {"prompt_strict_acc": [0.275, 0.575]}}
VERSION = {"id": 7, "key": "run:3:round:2:policy", "kind": "adapter", "base_model": "tiny", "round_number": 2,
           "parent_id": 6, "promoted": True, "metrics": {"examples": 12, "loss": 0.61, "reward_accuracy": 0.75}}
RUN = {"id": 3, "method": "spin", "base_model": "tiny", "rounds": 2, "status": "succeeded", "continuous": False,
       "stopping": {}, "prompt_set_ids": [1], "eval_prompt_set_ids": [2], "config": {"beta": 0.1}}
ROUNDS = [{"number": 1, "produced_version_id": 6, "metrics": {"eval_base": {**EVAL, "prompt_strict_acc": 0.3}, "eval": EVAL}},
          {"number": 2, "produced_version_id": 7,
           "metrics": {"eval": {**EVAL, "prompt_strict_acc": 0.45}, "gate": {"adopted": True, "reasons": []}}}]


def make_adapter(base: str, out) -> str:
    """A LoRA adapter with non-zero B (a fresh one is the identity), saved to `out`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(out)
    return str(out)


def test_model_card_names_method_base_and_metrics_with_intervals():
    from services.training.export import model_card

    card = model_card(VERSION, RUN, ROUNDS)
    assert "spin" in card and "tiny" in card and "round 2" in card
    assert "| start (base) | 40 | 0.300 [0.275, 0.575]" in card
    assert "| 2 ← this version | 40 | 0.450 [0.275, 0.575]" in card and "| yes |" in card
    assert "| reward_accuracy | 0.75 |" in card and '"beta": 0.1' in card


def test_card_without_evaluation_says_so():
    from services.training.export import model_card

    assert "No held-out evaluation" in model_card(VERSION, {**RUN, "eval_prompt_set_ids": []}, [{"number": 1, "metrics": {}}])


def test_merged_directory_loads_plainly_and_matches_base_plus_adapter(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from services.training.export import merge_to_dir, model_card

    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    out = merge_to_dir(tiny_model, adapter, tmp_path / "merged", card=model_card(VERSION, RUN, ROUNDS),
                       dtype="float32", extra={"version": VERSION})
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                    adapter).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "write a short poem about the sea"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        got, want, plain = merged(ids).logits, ref(ids).logits, base(ids).logits
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter did change the model
    assert "spin" in (out / "README.md").read_text()
    assert json.loads((out / "autodidact.json").read_text())["version"]["id"] == 7
    assert not list(tmp_path.glob(".merged.*"))  # the build directory was renamed into place


def test_dtype_is_applied_and_checked(tiny_model, tmp_path):
    from transformers import AutoConfig

    from services.training.export import merge_to_dir

    out = merge_to_dir(tiny_model, None, tmp_path / "half", card="x", dtype="bfloat16")
    assert str(AutoConfig.from_pretrained(str(out)).dtype).endswith("bfloat16")
    with pytest.raises(ValueError, match="int8"):
        merge_to_dir(tiny_model, None, tmp_path / "bad", card="x", dtype="int8")
