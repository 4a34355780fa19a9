"""The `local` backend: batched sampling with transformers in this process, on CPU or CUDA.

Self-improvement spends most of its time here, so the decoding loop is our own rather than
`model.generate`, for three reasons:
- prefill once per distinct prompt, then copy its KV cache for the n samples (generate would
  recompute the prompt n times when asked for num_return_sequences);
- drop a row from the batch (and its KV cache) as soon as it finishes, so short answers stop
  costing compute while long ones run on;
- draw each row's random numbers from its own stream, seeded by (seed, prompt, sample index), so a
  seeded prompt gives the same samples whatever else shares its batch (up to float rounding).
Sampling is by inverse CDF on the filtered distribution, one uniform number per row and step.

Prompts are grouped into length-sorted buckets with left padding, `max_batch_rows` rows (prompt x
sample) at a time. LoRA adapters of different model versions are loaded onto one cached base model
(shared.modeling.load_base) with peft under distinct names, and switched with set_adapter; the base
is sampled with adapter layers disabled, which is also the state the shared base is left in.

Left out: beam search, repetition penalties, speculative decoding, logprobs.
"""
from __future__ import annotations

import hashlib
import logging
import random
import threading
from collections import OrderedDict

import torch

from services.generation.base import Completion, ModelRef, SamplingParams, cut_at_stop
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
_model_locks: dict[int, threading.Lock] = {}
_registry_lock = threading.Lock()


def _row_seed(seed: int, prompt: list[int], sample: int) -> int:
    digest = hashlib.sha256(f"{seed}:{sample}:{','.join(map(str, prompt))}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k / nucleus to -inf (rows are independent)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # Sorting the full vocabulary (262k for Gemma) each step is slow on CPU, and the nucleus
        # almost always lies inside the few hundred likeliest tokens: look there first and sort
        # everything only for rows whose nucleus is wider.
        k = min(512, logits.shape[-1])
        probs = torch.softmax(logits, dim=-1)
        top, idx = torch.topk(probs, k, dim=-1)
        if bool((top.sum(-1) < top_p).any()):
            top, idx = torch.sort(probs, dim=-1, descending=True)
        # Keep a token if the mass before it is < top_p (so the likeliest token is always kept).
        keep = (top.cumsum(-1) - top) < top_p
        kept = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, idx, keep)
        logits = logits.masked_fill(~kept, float("-inf"))
    return logits


def _sample(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else inverse-CDF sampling with `uniforms`."""
    if params.temperature == 0:
        return logits.argmax(-1)
    logits = _filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


class LocalBackend:
    """Sample from a base model (+ LoRA adapter) in this process. `device`: "auto" | "cpu" |
    "cuda" | "cuda:1"...; `max_batch_rows`: rows decoded together (default 64 on CPU, 256 on GPU);
    `max_adapters`: adapters kept loaded per base model (least recently used are dropped);
    `ignore_eos`: never stop on end-of-turn / EOS (benchmarks use it to force equal lengths)."""

    def __init__(self, device: str = "auto", max_batch_rows: int | None = None, max_adapters: int = 8,
                 ignore_eos: bool = False):
        self.device = device
        self.ignore_eos = ignore_eos
        dev = pick_device(device)
        self.max_batch_rows = max_batch_rows or (256 if dev.type == "cuda" else 64)
        if self.max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {self.max_batch_rows}")
        self.max_adapters = max_adapters
        self._adapter_paths: dict[int, OrderedDict[str, str]] = {}

    # ---- model and adapters ------------------------------------------------------------------

    def _activate(self, model: ModelRef):
        """The base model with `model`'s adapter active (or adapters disabled for the base)."""
        base = load_base(model.base_model, device=self.device)
        key = id(base)
        peft_model = _peft_models.get(key)
        if model.adapter_path is None:
            if peft_model is not None:
                peft_model.base_model.disable_adapter_layers()
            return base
        from peft import PeftModel

        name = model.adapter_name
        path = str(model.adapter_path)
        loaded = self._adapter_paths.setdefault(key, OrderedDict())
        if peft_model is None:
            log.info("wrapping base %s with adapter %s from %s", model.base_model, name, path)
            peft_model = PeftModel.from_pretrained(base, path, adapter_name=name, is_trainable=False)
            _peft_models[key] = peft_model
            loaded[name] = path
        elif name not in peft_model.peft_config or loaded.get(name, path) != path:
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
        # Rows are (prompt, sample); sorted by prompt length so each batch carries little padding.
        rows = sorted(((i, j) for i in range(len(prompts)) for j in range(params.n)),
                      key=lambda r: (len(encoded[r[0]]), r[0], r[1]))
        out: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        base = load_base(model.base_model, device=self.device)
        with _registry_lock:
            lock = _model_locks.setdefault(id(base), threading.Lock())
        with lock:
            base = self._activate(model)
            try:
                for start in range(0, len(rows), self.max_batch_rows):
                    batch = rows[start:start + self.max_batch_rows]
                    done = self._decode(base, tok, encoded, batch, params, seed)
                    for (i, j), completion in zip(batch, done):
                        out[i][j] = completion
            finally:
                self._release(base)
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _decode(self, model, tok, encoded: list[list[int]], batch: list[tuple[int, int]],
                params: SamplingParams, seed: int) -> list[Completion]:
        device = next(model.parameters()).device
        stops = set(end_of_turn_ids(tok))
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        # Prefill each distinct prompt once, then copy its cache to all of its sample rows.
        uniq = list(dict.fromkeys(i for i, _ in batch))
        width = max(len(encoded[i]) for i in uniq)
        ids = torch.full((len(uniq), width), pad, dtype=torch.long)
        mask = torch.zeros((len(uniq), width), dtype=torch.long)
        for r, i in enumerate(uniq):
            ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1)
        cache = out.past_key_values
        expand = torch.tensor([uniq.index(i) for i, _ in batch], device=device)
        cache.batch_select_indices(expand)
        logits = out.logits[:, -1, :].index_select(0, expand)
        mask = mask.index_select(0, expand)
        last_pos = positions[:, -1].index_select(0, expand)

        rngs = [random.Random(_row_seed(seed, encoded[i], j)) for i, j in batch]
        tokens: list[list[int]] = [[] for _ in batch]
        finish: list[str | None] = [None] * len(batch)
        live = list(range(len(batch)))  # batch rows still decoding, in cache order
        window = 4 * max((len(s) for s in params.stop), default=0) + 4
        banned = torch.tensor(sorted(stops), device=device) if self.ignore_eos else None
        for step in range(params.max_new_tokens):
            if banned is not None:
                logits = logits.index_fill(-1, banned, float("-inf"))
            uniforms = torch.tensor([rngs[r].random() for r in live], dtype=torch.float32)
            nxt = _sample(logits, params, uniforms)
            keep = []
            for pos, (r, t) in enumerate(zip(live, nxt.tolist())):
                tokens[r].append(t)
                if t in stops or params.stop and cut_at_stop(tok.decode(tokens[r][-window:]), params.stop)[1]:
                    finish[r] = "stop"
                elif step + 1 == params.max_new_tokens:
                    finish[r] = "length"
                else:
                    keep.append(pos)
            if not keep:
                break
            if len(keep) < len(live):  # drop finished rows from every tensor and the cache
                idx = torch.tensor(keep, device=device)
                cache.batch_select_indices(idx)
                mask, last_pos, nxt = mask.index_select(0, idx), last_pos.index_select(0, idx), nxt.index_select(0, idx)
                live = [live[p] for p in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
            last_pos = last_pos + 1
            out = model(input_ids=nxt.unsqueeze(-1), attention_mask=mask, position_ids=last_pos.unsqueeze(-1),
                        past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1, :]

        results = []
        for r in range(len(batch)):
            body = [t for t in tokens[r] if t not in stops]
            text, cut = cut_at_stop(tok.decode(body, skip_special_tokens=True), params.stop)
            results.append(Completion(text=text, token_count=len(tokens[r]),
                                      finish_reason="stop" if cut else finish[r] or "length"))
        return results
