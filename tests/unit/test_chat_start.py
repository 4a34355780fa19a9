"""The chat-capable start: built once from a base (trained here on a tiny model), cached, and for the
default settings merged from the shipped adapter instead of trained."""
from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from services.methods import chat_start
from services.methods.chat_start import DEFAULT, ChatStartConfig, build_chat_start, shipped_adapter


def test_the_default_settings_have_a_shipped_adapter():
    """Changing the default recipe without retraining and exporting its adapter fails here."""
    path = shipped_adapter(DEFAULT)
    assert path is not None and path.name == DEFAULT.key()
    weights = load_file(str(path / "adapter_model.safetensors"))
    assert weights and all(str(w.dtype) == "torch.float16" for w in weights.values())
    assert json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"] == "gemma"


def test_train_cache_and_merge_a_start_on_a_tiny_model(tiny_model, tmp_path, monkeypatch, fresh_settings):
    monkeypatch.setenv("AUTODIDACT_MODEL_CACHE", str(tmp_path / "cache"))
    cfg = ChatStartConfig(base_model=tiny_model, n_train=8, epochs=1, batch_size=4, learning_rate=1e-3)
    assert shipped_adapter(cfg) is None  # other settings: nothing shipped, so it trains
    steps = []
    path = build_chat_start(cfg, on_step=steps.append)
    assert len(steps) == 2 and (path / "config.json").exists() and (path / "adapter" / "adapter_model.safetensors").exists()
    info = json.loads((path / "chat_start.json").read_text())
    assert info["examples"] == 8 and info["config"]["n_train"] == 8
    again = build_chat_start(cfg, on_step=steps.append)  # cached: no training
    assert again == path and len(steps) == 2
    # an exported adapter is what a later build merges instead of training
    monkeypatch.setattr(chat_start, "SHIPPED", tmp_path / "shipped")
    chat_start.export_adapter(path / "adapter", cfg)
    assert shipped_adapter(cfg) is not None
    import shutil

    shutil.rmtree(path)
    merged = build_chat_start(cfg, on_step=steps.append)
    assert len(steps) == 2 and "shipped" in json.loads((merged / "chat_start.json").read_text())["adapter"]


def test_settings_are_validated():
    with pytest.raises(ValueError, match="n_train"):
        ChatStartConfig(n_train=0)
    assert ChatStartConfig().key() == DEFAULT.key() != ChatStartConfig(n_train=999).key()
