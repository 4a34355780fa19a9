"""Exact greedy decoding with a bfloat16 LM head.

Gemma 3 270M spends most of a decode step in its LM head: a [rows x 640] x [640 x 262,144] product
is 168M of the model's 268M parameters, and on a CPU with AVX-512 BF16 the same product in bfloat16
runs about 3x faster than in float32 (docs/benchmarks.md). A greedy step only needs the argmax, so:

1. z~ = bf16(h) . bf16(W)^T, in bfloat16 (float32 accumulation, bfloat16 result);
2. a rigorous bound on |z - z~| for every vocabulary entry j: rounding h and W_j to bfloat16 moves
   each product h_i W_ji by at most (2u + u^2)|h_i W_ji| with u = 2^-8, so the dot product moves by
   at most a * ||h|| * ||W_j|| (Cauchy-Schwarz; `a` also covers float32 accumulation), and rounding
   the result adds u|z~_j| at most;
3. every entry whose bounded interval reaches the top entry's lower end is a candidate: with
   D = (2 a ||h|| max_j ||W_j|| + 2u |max z~|) / (1 - u), the float32 argmax is among
   {j : z~_j >= max z~ - D};
4. the candidates' logits are computed again in float32 from the float32 weights and the largest
   wins (the lowest index on ties, as argmax does).

The chosen token is the float32 model's greedy token; only the order of float32 additions differs
from a full float32 product, which can matter for exact ties alone. On Gemma 3 270M a row has about
6 candidates (at most a few dozen). A row whose candidate set is large (a flat distribution) gets a
full float32 row instead. Soft-capping (cap * tanh(z / cap)) is monotone and leaves the argmax
alone.

Top-k sampling works the same way: the k likeliest entries lie in {j : z~_j >= (k-th largest z~) -
D} (D as above with the larger of |max z~| and |k-th z~|), so only those are scored in float32 and
every other logit is -inf; top-k filtering then keeps exactly the float32 top k, and temperature,
top-p and the draw see float32 values. Sampling without top-k needs every probability and keeps
the float32 head.
"""
from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

import torch

U = 2.0 ** -8  # bfloat16 unit roundoff
A = 2 * U + U * U + 1e-4  # per-product rounding of h and W, plus float32 accumulation slack
MAX_CANDIDATES = 4096  # per row; above it the row is scored in float32 in full
MAX_TOP_K = 1024  # top-k sampling above this keeps the float32 head
MODES = ("auto", "bf16-exact", "float32")  # the setting `greedy_head`


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 products natively (AVX-512 BF16 or AMX)."""
    if platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_exact_head(mode: str, weight: torch.Tensor) -> bool:
    """`mode` is the setting `greedy_head`: float32 | bf16-exact | auto (bf16-exact on CPUs with
    native bfloat16 products and a float32 head, float32 elsewhere)."""
    if mode == "float32" or weight.dtype != torch.float32:
        return False
    if mode == "bf16-exact":
        return True
    return weight.device.type == "cpu" and cpu_has_bf16()


class ExactBf16Head:
    """argmax over the vocabulary of h . W^T for float32 W, computed as described above."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self.low = weight.detach().to(torch.bfloat16)
        self.max_norm = float(weight.detach().float().norm(dim=1).max())
        self.key = (weight.data_ptr(), weight._version)
        self.candidates = self.rows = self.fallbacks = 0  # totals, for tests and benchmarks

    @classmethod
    def for_model(cls, model, weight: torch.Tensor) -> ExactBf16Head:
        """The head kept on the model object, rebuilt if the weight changed since."""
        head = getattr(model, "_autodidact_greedy_head", None)
        if head is None or head.weight is not weight or head.key != (weight.data_ptr(), weight._version):
            head = cls(weight)
            model._autodidact_greedy_head = head
        return head

    def _candidates(self, h: torch.Tensor, k: int, banned: torch.Tensor | None):
        """(rows, cols, float32 logits) of every entry that can be among a row's k largest, the
        candidates per row, and the mask of rows with more than MAX_CANDIDATES (left out, with a
        count of 0, for a full float32 row)."""
        z = h.to(torch.bfloat16) @ self.low.t()  # [B, V] bfloat16
        if banned is not None:
            z.index_fill_(-1, banned, float("-inf"))
        tops = torch.topk(z, k, dim=1).values.float() if k > 1 else z.amax(dim=1, keepdim=True).float()
        top, kth = tops[:, 0], tops[:, -1]
        scale = torch.maximum(top.abs(), kth.abs())
        margin = (2 * A * h.norm(dim=1) * self.max_norm + 2 * U * scale) / (1 - U)
        threshold = kth - margin
        # Compare in bfloat16 against a threshold rounded down: lower it by more than one rounding.
        threshold = (threshold - threshold.abs() * 2 * U - 1e-30).to(torch.bfloat16)
        rows, cols = (z >= threshold.unsqueeze(1)).nonzero(as_tuple=True)  # row-major: rows ascending
        del z
        counts = torch.bincount(rows, minlength=h.shape[0])  # (a bool row sum is 5x slower here)
        big = counts > MAX_CANDIDATES
        if big.any():
            small = ~big[rows]
            rows, cols = rows[small], cols[small]
            counts = counts.masked_fill(big, 0)
        exact = (self.weight.index_select(0, cols) * h.index_select(0, rows)).sum(dim=1)
        self.rows += h.shape[0]
        self.candidates += int(counts.sum())
        self.fallbacks += int(big.sum())
        return rows, cols, exact, counts, big

    def _full(self, h: torch.Tensor, banned: torch.Tensor | None) -> torch.Tensor:
        full = h @ self.weight.t()
        if banned is not None:
            full.index_fill_(-1, banned, float("-inf"))
        return full

    @torch.inference_mode()
    def top_k_candidates(self, hidden: torch.Tensor, k: int, banned: torch.Tensor | None = None,
                         softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(values [B, C], vocabulary ids [B, C]) with C >= k: each row's candidates with their
        float32 logits (soft-capped where the model caps), padded with -inf: the values that
        the float32 head would give on a superset of each row's k largest, without a [B, V] tensor:
        the sampler draws from these directly (sampling.choose_top_k)."""
        h = hidden.float()
        rows, cols, exact, counts, big = self._candidates(h, k, banned)
        n = h.shape[0]
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(rows.shape[0], device=h.device) - starts[rows]
        width = max(k, int(counts.max()) if rows.numel() else 0)
        values = torch.full((n, width), float("-inf"), dtype=torch.float32, device=h.device)
        ids = torch.zeros((n, width), dtype=torch.long, device=h.device)
        values[rows, pos], ids[rows, pos] = exact, cols
        if big.any():  # rows scored in full: their own k largest
            top, where = torch.topk(self._full(h[big], banned), k, dim=-1)
            values[big], ids[big] = torch.full_like(values[big], float("-inf")), 0
            values[big, :k], ids[big, :k] = top, where
        if softcap:
            values = torch.tanh(values / softcap) * softcap
        return values, ids

    @torch.inference_mode()
    def argmax(self, hidden: torch.Tensor, banned: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [B, d] float32 -> [B] token ids; `banned` ids are never chosen."""
        h = hidden.float()
        rows, cols, exact, _, big = self._candidates(h, 1, banned)
        n = h.shape[0]
        best = torch.full((n,), float("-inf"), dtype=exact.dtype, device=h.device).scatter_reduce(
            0, rows, exact, "amax")
        vocab = self.weight.shape[0]
        first = torch.where(exact == best[rows], cols, torch.full_like(cols, vocab))
        out = torch.full((n,), vocab, dtype=torch.long, device=h.device).scatter_reduce(0, rows, first, "amin")
        if big.any():
            out[big] = self._full(h[big], banned).argmax(dim=1)
        return out
