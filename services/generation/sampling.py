"""Token choice for the local backend: per-row seeds, top-k / nucleus filtering, greedy or
inverse-CDF sampling. Pure functions on tensors.

Each row draws its random numbers from its own stream, seeded by (seed, prompt, sample index), so a
seeded prompt gives the same samples whatever else shares its batch (up to float rounding).
"""
from __future__ import annotations

import hashlib

import torch

from services.generation.base import SamplingParams


def row_seed(seed: int, prompt: list[int], sample: int) -> int:
    digest = hashlib.sha256(f"{seed}:{sample}:{','.join(map(str, prompt))}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
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


def choose(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor) -> torch.Tensor:
    """Next token per row: argmax at temperature 0, else inverse-CDF sampling with `uniforms`."""
    if params.temperature == 0:
        return logits.argmax(-1)
    if params.top_k and params.top_k < logits.shape[-1]:
        return _choose_top_k(logits, params, uniforms)
    logits = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def choose_top_k(values: torch.Tensor, ids: torch.Tensor, params: SamplingParams,
                 uniforms: torch.Tensor) -> torch.Tensor:
    """Top-k sampling from candidate logits `values` [B, C] (C >= k, -inf padding) whose vocabulary
    ids are `ids` [B, C]: the draw `choose` makes on full logits holding these values."""
    return _choose_top_k(values, params, uniforms, ids)


def _choose_top_k(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor,
                  ids: torch.Tensor | None = None) -> torch.Tensor:
    """`choose` for top-k sampling on the k kept entries only: the same draw (the kept entries in
    vocabulary order, the same inverse CDF) without softmax and cumsum over the whole vocabulary,
    which for Gemma's 262k entries cost more than the sampling step's LM head in bfloat16. Entries
    tied with the k-th largest beyond k are not kept (filter_logits keeps them all)."""
    values, index = torch.topk(logits, params.top_k, dim=-1)  # in the logits' dtype: no float copy of all
    if ids is not None:
        index = ids.gather(-1, index)
    index, order = index.sort(dim=-1)  # vocabulary order, as the full-vocabulary cumsum runs
    values = values.gather(-1, order).float() / params.temperature
    if params.top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        top, idx = torch.sort(probs, dim=-1, descending=True)
        keep = (top.cumsum(-1) - top) < params.top_p
        kept = torch.zeros_like(values, dtype=torch.bool).scatter(-1, idx, keep)
        values = values.masked_fill(~kept, float("-inf"))
    cdf = torch.softmax(values, dim=-1).cumsum(-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    pos = torch.searchsorted(cdf, target).clamp_(max=values.shape[-1] - 1)
    return index.gather(-1, pos).squeeze(-1)
