"""The `local` backend: sampling with transformers in this process, on CPU or CUDA.

Self-improvement spends most of its time here, so the decoding loop is our own rather than
`model.generate` (services/generation/batcher.py):
- continuous batching: as many rows (prompt x sample) in flight as fit a memory budget, and a row
  that finishes is replaced by a waiting one, so short answers never leave the batch idle;
- each distinct prompt is prefilled once and its KV cache copied to its n samples (generate would
  recompute the prompt n times when asked for num_return_sequences);
- a preallocated KV cache written in place (transformers' DynamicCache copies itself every step);
- each row's random numbers come from its own stream (services/generation/sampling.py), so a
  seeded prompt gives the same samples whatever else shares its batch (up to float rounding).
Greedy decoding gives the tokens a per-prompt float32 `generate` gives.

LoRA adapters of different model versions are loaded onto one cached base model
(shared.modeling.load_base) with peft under distinct names, and switched with set_adapter; the base
is sampled with adapter layers disabled, which is also the state the shared base is left in.

Left out: beam search, repetition penalties, speculative decoding, logprobs.
"""
from __future__ import annotations

import logging
import random
import threading
from collections import OrderedDict

import torch

from services.generation.base import Completion, ModelRef, SamplingParams
from services.generation.batcher import SLACK_COLUMNS, Batcher, bytes_per_row
from services.generation.greedy_head import MODES as GREEDY_HEADS
from shared.modeling import (
    end_of_turn_ids,
    load_base,
    load_tokenizer,
    pick_device,
    prompt_ids,
)

log = logging.getLogger(__name__)

# One peft wrapper per cached base model (keyed by id of the base module), guarded by a lock: the
# active adapter is state of the shared model, so two threads must not sample from it at once.
_peft_models: dict[int, object] = {}
# adapter name -> directory, per wrapped base, least recently used first; shared like _peft_models, so
# a second backend in the process never mistakes another directory's adapter of the same name
_adapter_paths: dict[int, OrderedDict] = {}
_model_locks: dict[int, threading.Lock] = {}
_registry_lock = threading.Lock()


# `generation_dtype`: bfloat16 on a CPU is opt-in. It is 2-3x faster where the CPU has native
# bfloat16 products, and its answers differ from float32's (docs/benchmarks.md measures the
# held-out accuracy both ways).
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}


class LocalBackend:
    """Sample from a base model (+ LoRA adapter) in this process. `device`: "auto" | "cpu" |
    "cuda" | "cuda:1"...; `memory_mb`: memory for the rows in flight (their KV cache and logits),
    from which the backend picks how many rows to decode at once; `max_batch_rows`: an optional cap
    on that number; `max_adapters`: adapters kept loaded per base model (least recently used are
    dropped); `ignore_eos`: never stop on end-of-turn / EOS (benchmarks use it to force equal
    lengths)."""

    def __init__(self, device: str = "auto", max_batch_rows: int | None = None, memory_mb: int = 2048,
                 max_adapters: int = 8, ignore_eos: bool = False, greedy_head: str = "auto",
                 dtype: str = "auto"):
        self.device = device
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.dtype = DTYPES[dtype]  # None: the device's default (float32 on CPU, bfloat16 on GPU)
        self.ignore_eos = ignore_eos
        if greedy_head not in GREEDY_HEADS:
            raise ValueError(f"greedy_head must be one of {', '.join(GREEDY_HEADS)}, got {greedy_head!r}")
        self.greedy_head = greedy_head
        pick_device(device)  # fails early on a malformed device string
        if max_batch_rows is not None and max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1 (or None for no cap), got {max_batch_rows}")
        if memory_mb < 1:
            raise ValueError(f"memory_mb must be >= 1, got {memory_mb}")
        self.max_batch_rows = max_batch_rows
        self.memory_mb = memory_mb
        self.max_adapters = max_adapters
        self.last_slots = 0  # rows in flight of the latest call (benchmarks report it)
        self.capacity = 0  # rows the memory budget held in the latest call, whatever its size

    def slots_for(self, model, longest_prompt: int, params: SamplingParams) -> int:
        """Rows in flight: as many as `memory_mb` holds, up to `max_batch_rows`."""
        columns = longest_prompt + params.max_new_tokens + SLACK_COLUMNS
        fit = self.memory_mb * 2**20 // bytes_per_row(model, columns, sampling=params.temperature > 0)
        return max(1, min(fit, self.max_batch_rows or fit))

    def batch_prompts(self, n: int) -> int:
        """Prompts per call that keep the batch full while a caller saves progress between calls:
        a few times the rows in flight (estimated for Gemma-sized caches until a call has run)."""
        return max(8, 4 * (self.capacity or 64) // max(1, n))

    # ---- model and adapters ------------------------------------------------------------------

    def _activate(self, model: ModelRef):
        """The base model with `model`'s adapter active (or adapters disabled for the base)."""
        base = load_base(model.base_model, device=self.device, dtype=self.dtype)
        key = id(base)
        peft_model = _peft_models.get(key)
        if model.adapter_path is None:
            if peft_model is not None:
                peft_model.base_model.disable_adapter_layers()
            return base
        from peft import PeftModel

        name = model.adapter_name
        path = str(model.adapter_path)
        loaded = _adapter_paths.setdefault(key, OrderedDict())
        if peft_model is None:
            log.info("wrapping base %s with adapter %s from %s", model.base_model, name, path)
            peft_model = PeftModel.from_pretrained(base, path, adapter_name=name, is_trainable=False)
            _peft_models[key] = peft_model
            loaded[name] = path
        elif name not in peft_model.peft_config or loaded.get(name) != path:
            if name in peft_model.peft_config:  # same name, different directory: reload it
                peft_model.delete_adapter(name)
            log.info("loading adapter %s from %s", name, path)
            peft_model.load_adapter(path, adapter_name=name, is_trainable=False)
            loaded[name] = path
        loaded.move_to_end(name)
        while len(loaded) > self.max_adapters:
            old, _ = loaded.popitem(last=False)
            if old in peft_model.peft_config:
                peft_model.delete_adapter(old)
        peft_model.set_adapter(name)
        peft_model.base_model.enable_adapter_layers()
        peft_model.eval()
        return base

    def _release(self, base) -> None:
        peft_model = _peft_models.get(id(base))
        if peft_model is not None:
            peft_model.base_model.disable_adapter_layers()

    # ---- generation --------------------------------------------------------------------------

    def generate(self, prompts: list[list[dict]], model: ModelRef,
                 params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        tok = load_tokenizer(model.base_model)
        return self.generate_encoded([prompt_ids(tok, messages) for messages in prompts], model, params)

    def generate_encoded(self, encoded: list[list[int]], model: ModelRef,
                         params: SamplingParams) -> list[list[Completion]]:
        """`generate` on prompts already rendered to token ids (what an OpenAI-compatible server
        receives on /v1/completions)."""
        if not encoded:
            return []
        tok = load_tokenizer(model.base_model)
        prompts = encoded
        seed = params.seed if params.seed is not None else random.SystemRandom().getrandbits(62)
        # Rows are (prompt, sample), sorted by prompt length so each refill carries little padding.
        rows = sorted(((i, j) for i in range(len(prompts)) for j in range(params.n)),
                      key=lambda r: (len(encoded[r[0]]), r[0], r[1]))
        out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        base = load_base(model.base_model, device=self.device, dtype=self.dtype)
        with _registry_lock:
            lock = _model_locks.setdefault(id(base), threading.Lock())
        with lock:
            base = self._activate(model)
            try:
                slots = self.slots_for(base, max(map(len, encoded)), params)
                self.last_slots, self.capacity = min(slots, len(rows)), slots
                batcher = Batcher(base, tok, encoded, rows, params, seed, slots=slots,
                                  stops=set(end_of_turn_ids(tok)), ignore_eos=self.ignore_eos,
                                  greedy_head=self.greedy_head)
                for (i, j), completion in zip(rows, batcher.run()):
                    out[i][j] = completion
            finally:
                self._release(base)
        return out  # type: ignore[return-value]
