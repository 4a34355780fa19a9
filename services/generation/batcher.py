"""Continuous batching for the local backend: a pool of row slots over one preallocated KV cache,
refilled from the queue of waiting rows as rows finish, so short answers never leave the batch idle
while long ones run on.

Layout. Each layer's keys and values live in one tensor [slots, kv_heads, columns, head_dim]. Live
rows fill slots 0..live-1 (a finished row's slot is taken by the last live row) and are
right-aligned: every row's history ends at the shared column `end`, so a decode step writes each
row's new token into column `end`, and a row of length L holds columns [end - L, end). We build the
attention masks ourselves (each row's left padding, causal order, and the sliding window of the
layers that have one) and hand them to the model as the per-layer-type mask dictionary that
transformers' decoders accept, with per-row position ids; the padding never reaches the model.

Refill. When at least `refill_at` slots are free (or none is live), the next waiting rows are
prefilled in one forward pass that writes straight into their slots; each distinct prompt is
prefilled once and its columns copied to its other samples. When the buffer's last column is
reached, the window slides left past the columns no live row uses.

Why our own cache: transformers' DynamicCache grows by concatenation, which copies the whole cache
every step (quadratic in the answer length), and its rows cannot be replaced mid-batch.

Left out: models whose layer types are other than full and sliding attention (chunked, linear),
and paged memory (the buffer is sized for the longest prompt plus max_new_tokens).
"""
from __future__ import annotations

import random
from collections import deque

import torch
from transformers.cache_utils import Cache

from services.generation.base import FINISH_AT_LIMIT, Completion, SamplingParams, cut_at_stop
from services.generation.greedy_head import MAX_TOP_K, ExactBf16Head, use_exact_head
from services.generation.sampling import choose, choose_top_k, row_seed

SLACK_COLUMNS = 64  # extra columns so the window slides left every ~64 steps, not every step


def text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def bytes_per_row(model, columns: int, sampling: bool) -> int:
    """Memory one row in flight costs: its KV cache columns in every layer, plus its vocabulary-
    sized logits (and, when sampling, the filter / softmax / cumsum temporaries beside them)."""
    cfg = text_config(model)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    width = next(model.parameters()).element_size()
    cache = cfg.num_hidden_layers * 2 * kv_heads * head_dim * columns * width
    return cache + cfg.vocab_size * 4 * (6 if sampling else 2)


class SlotCache(Cache):
    """The KV buffer. Before each forward the batcher says which slots run (`rows`), which columns
    the new keys go to (`write`) and from which column attention reads (`read_from`)."""

    def __init__(self, model, slots: int, columns: int):
        super().__init__(layers=[])
        cfg = text_config(model)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        p = next(model.parameters())
        # Zeros, not empty: masked columns are multiplied by a zero weight, and 0 * NaN is NaN.
        shape = (slots, kv_heads, columns, head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.num_hidden_layers)]
        self.rows, self.write, self.read_from = (0, 0), (0, 0), 0

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        (r0, r1), (w0, w1) = self.rows, self.write
        k, v = self.k[layer_idx], self.v[layer_idx]
        k[r0:r1, :, w0:w1] = key_states
        v[r0:r1, :, w0:w1] = value_states
        return k[r0:r1, :, self.read_from:w1], v[r0:r1, :, self.read_from:w1]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.write[1]

    def move(self, dst, src, c0: int, c1: int) -> None:
        """Copy columns [c0, c1) of slots `src` into slots `dst` (lists of equal length)."""
        d, s = torch.tensor(dst), torch.tensor(src)
        for buf in (*self.k, *self.v):
            buf[d, :, c0:c1] = buf[s, :, c0:c1]

    def shift(self, live: int, c0: int, c1: int, to: int) -> None:
        """Move columns [c0, c1) of the live slots to start at column `to`."""
        for buf in (*self.k, *self.v):
            buf[:live, :, to:to + c1 - c0] = buf[:live, :, c0:c1].clone()


class Batcher:
    """Decode `rows` ((prompt index, sample index) pairs) of `encoded` prompts with at most `slots`
    rows in flight. `run()` returns one Completion per row, in the order of `rows`."""

    def __init__(self, model, tok, encoded: list[list[int]], rows: list[tuple[int, int]],
                 params: SamplingParams, seed: int, *, slots: int, stops: set[int], ignore_eos: bool = False,
                 slack: int = SLACK_COLUMNS, greedy_head: str = "auto"):
        self.model, self.tok, self.encoded, self.rows, self.params = model, tok, encoded, rows, params
        self.stops, self.ignore_eos = stops, ignore_eos
        self.device = next(model.parameters()).device
        cfg = text_config(model)
        self.layer_types = sorted(set(getattr(cfg, "layer_types", None) or ["full_attention"]))
        unknown = set(self.layer_types) - {"full_attention", "sliding_attention"}
        if unknown:
            raise ValueError(f"the local backend's batcher handles full and sliding attention layers, not {sorted(unknown)}")
        self.window = getattr(cfg, "sliding_window", None) or 1 << 30
        self.bool_mask = getattr(cfg, "_attn_implementation", "sdpa") != "eager"
        self.slots = max(1, min(slots, len(rows)))
        self.refill_at = max(1, self.slots // 8)
        longest = max(len(encoded[i]) for i, _ in rows)
        self.columns = longest + params.max_new_tokens + slack
        self.cache = SlotCache(model, self.slots, self.columns)
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.rngs = [random.Random(row_seed(seed, encoded[i], j)) for i, j in rows]
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.finish: list[str | None] = [None] * len(rows)
        self.stop_window = 4 * max((len(s) for s in params.stop), default=0) + 4
        self.banned = torch.tensor(sorted(stops), device=self.device) if ignore_eos else None
        # Per live slot: which row it holds, how many tokens its cache holds, the token to feed next.
        self.slot_row: list[int] = []
        self.length: list[int] = []
        self.pending: list[int] = []
        self.end = 0
        self.steps = self.slides = 0  # forward passes and window slides, for tests and benchmarks
        # Greedy and top-k steps with the exact bfloat16 head (greedy_head.py) run the decoder body
        # and pick from hidden states; otherwise the model computes the logits.
        weight = model.get_output_embeddings().weight
        top_k_ok = 0 < params.top_k <= min(MAX_TOP_K, weight.shape[0] - 1)
        exact_ok = params.temperature == 0 or top_k_ok
        self.head = ExactBf16Head.for_model(model, weight) \
            if exact_ok and use_exact_head(greedy_head, weight) else None
        self.body = model.get_decoder() if self.head is not None else None
        self.softcap = getattr(cfg, "final_logit_softcapping", None)

    # ---- masks -------------------------------------------------------------------------------

    def _masks(self, allowed: torch.Tensor, distance: torch.Tensor):
        """Per-layer-type masks from the padding/causal `allowed` [B, 1, q, k] and the query-key
        `distance` [q, k]: sliding layers also drop keys a window or more behind the query."""
        out = {}
        for kind in self.layer_types:
            m = allowed & (distance < self.window) if kind == "sliding_attention" else allowed
            if not self.bool_mask:
                m = torch.zeros(m.shape, dtype=next(self.model.parameters()).dtype,
                                device=self.device).masked_fill(~m, torch.finfo(torch.float32).min)
            out[kind] = m
        return out

    # ---- the loop ----------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self) -> list[Completion]:
        waiting = deque(range(len(self.rows)))
        while waiting or self.slot_row:
            free = self.slots - len(self.slot_row)
            if waiting and (free >= self.refill_at or not self.slot_row):
                new = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                first = len(self.slot_row)
                logits = self._prefill(new)
                self._advance(logits, first)
                self._drop_finished()
            if self.slot_row:
                self._advance(self._decode(), 0)
                self._drop_finished()
        return [self._completion(r) for r in range(len(self.rows))]

    def _prefill(self, new: list[int]) -> torch.Tensor:
        live = len(self.slot_row)
        uniq = list(dict.fromkeys(self.rows[r][0] for r in new))
        lens = [len(self.encoded[i]) for i in uniq]
        width = max(lens)
        if self.end < width:  # make room on the left for the new prompts
            used = max(self.length, default=0)
            if live:
                self.cache.shift(live, self.end - used, self.end, width - used)
            self.end = width
        ids = torch.full((len(uniq), width), self.pad, dtype=torch.long)
        starts = torch.tensor([width - n for n in lens])
        for q, i in enumerate(uniq):
            ids[q, width - lens[q]:] = torch.tensor(self.encoded[i])
        col = torch.arange(width)
        positions = (col.unsqueeze(0) - starts.unsqueeze(1)).clamp(min=0)
        distance = col.unsqueeze(1) - col.unsqueeze(0)  # query minus key
        allowed = (col.view(1, 1, 1, -1) >= starts.view(-1, 1, 1, 1)) & (distance >= 0)
        allowed = allowed | torch.eye(width, dtype=torch.bool)  # padding queries see themselves: no NaN rows
        c = self.cache
        c.rows, c.write, c.read_from = (live, live + len(uniq)), (self.end - width, self.end), self.end - width
        logits = self._forward(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                               attention_mask=self._masks(allowed.to(self.device), distance.to(self.device)),
                               past_key_values=c)
        order = [uniq.index(self.rows[r][0]) for r in new]
        if order != list(range(len(new))):  # copy each prompt's columns to its other samples
            c.move([live + t for t in range(len(new))], [live + q for q in order], self.end - width, self.end)
            logits = logits[torch.tensor(order, device=self.device)]
        for r, q in zip(new, order):
            self.slot_row.append(r)
            self.length.append(lens[q])
            self.pending.append(self.pad)
        return logits

    def _decode(self) -> torch.Tensor:
        live = len(self.slot_row)
        if self.end >= self.columns:  # slide the window left past the columns no row uses
            used = max(self.length)
            self.cache.shift(live, self.end - used, self.end, 0)
            self.end = used
            self.slides += 1
        lo = self.end - max(self.length)
        cols = torch.arange(lo, self.end + 1)
        starts = torch.tensor([self.end - n for n in self.length])
        allowed = (cols.view(1, 1, 1, -1) >= starts.view(-1, 1, 1, 1))
        distance = (self.end - cols).view(1, -1)
        c = self.cache
        c.rows, c.write, c.read_from = (0, live), (self.end, self.end + 1), lo
        out = self._forward(input_ids=torch.tensor(self.pending, device=self.device).unsqueeze(-1),
                            position_ids=torch.tensor(self.length, device=self.device).unsqueeze(-1),
                            attention_mask=self._masks(allowed.to(self.device), distance.to(self.device)),
                            past_key_values=c)
        self.end += 1
        self.length = [n + 1 for n in self.length]
        return out

    def _forward(self, **inputs) -> torch.Tensor:
        """The last position's float32 logits [B, V], or its hidden state [B, d] where the exact
        greedy head picks the token."""
        self.steps += 1
        if self.head is not None:
            return self.body(**inputs, use_cache=True).last_hidden_state[:, -1, :]
        return self.model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def _advance(self, logits: torch.Tensor, first: int) -> None:
        """Choose the next token of slots first.. from their logits and mark rows that finish."""
        params, stops = self.params, self.stops
        slots = range(first, len(self.slot_row))
        uniforms = torch.tensor([self.rngs[self.slot_row[s]].random() for s in slots], dtype=torch.float32)
        if self.head is not None and params.temperature == 0:  # `logits` are hidden states here
            chosen = self.head.argmax(logits, self.banned)
        elif self.head is not None:
            values, ids = self.head.top_k_candidates(logits, params.top_k, self.banned, self.softcap)
            chosen = choose_top_k(values, ids, params, uniforms)
        else:
            if self.banned is not None:  # in place: a copy of [rows, vocabulary] logits per step costs
                logits.index_fill_(-1, self.banned, float("-inf"))
            chosen = choose(logits, params, uniforms)
        for s, t in zip(slots, chosen.tolist()):
            r = self.slot_row[s]
            toks = self.tokens[r]
            toks.append(t)
            self.pending[s] = t
            if t in stops or params.stop and cut_at_stop(self.tok.decode(toks[-self.stop_window:]), params.stop)[1]:
                self.finish[r] = "stop"
            elif len(toks) == params.max_new_tokens:
                self.finish[r] = FINISH_AT_LIMIT

    def _drop_finished(self) -> None:
        live = len(self.slot_row)
        done = [self.finish[r] is not None for r in self.slot_row]
        keep = live - sum(done)
        holes = [s for s in range(keep) if done[s]]
        movers = [s for s in range(keep, live) if not done[s]]
        if holes:
            self.cache.move(holes, movers, self.end - max(self.length), self.end)
            for h, m in zip(holes, movers):
                for lst in (self.slot_row, self.length, self.pending):
                    lst[h] = lst[m]
        del self.slot_row[keep:], self.length[keep:], self.pending[keep:]

    def _completion(self, r: int) -> Completion:
        body = [t for t in self.tokens[r] if t not in self.stops]
        text, cut = cut_at_stop(self.tok.decode(body, skip_special_tokens=True), self.params.stop)
        return Completion(text=text, token_count=len(self.tokens[r]),
                          finish_reason="stop" if cut else self.finish[r] or FINISH_AT_LIMIT)
