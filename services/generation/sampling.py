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
    logits = filter_logits(logits.float() / params.temperature, params.top_k, params.top_p)
    cdf = torch.softmax(logits, dim=-1).cumsum(-1)
    target = (uniforms.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
