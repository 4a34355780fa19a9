"""Response log-probabilities of a causal LM without materialising [batch, length, vocab] logits.

Gemma 3 has a 262k vocabulary: full logits for one batch of 16 sequences × 128 tokens are 2 GiB in
float32, and autograd would keep them for the backward. So:
1. The decoder body runs on right-padded sequences (prompt + response minus its last token, which
   predicts nothing we score) and returns hidden states. No attention mask is passed: with right
   padding a real position only ever attends to earlier, real positions, and the plain causal
   path is the fastest one.
2. Only the hidden states that predict a response token are kept (index_select), and
3. the LM head is applied to them in chunks of `chunk` positions by `_HeadLogProb`, which takes
   log-softmax and the target's entry per chunk. When the head's weight is frozen (LoRA; Gemma ties
   it to the embeddings), the forward also computes the one-vector-per-position derivative
   d log p / d h = (onehot − p)·W, so the backward is a scale of stored [N, hidden] vectors:
   two vocab-sized matmuls per position in all, instead of three for forward + recompute + grad.
   With a trainable head (full fine-tuning) the backward recomputes each chunk instead.
Gemma's `final_logit_softcapping` (cap·tanh(z/cap)) is applied when the config sets it.

`Scorer` wraps a (peft) causal LM as an nn.Module whose forward returns per-sequence sums, so that
DDP's hooks see the whole computation when accelerate wraps it.

Pairs share their prompt (`collate_pairs`): one row holds prompt + chosen + rejected, the rejected
tokens take the position ids that follow the prompt (as the chosen ones do) and a mask lets each
continuation see the prompt and itself only, so the prompt goes through the body once per pair
instead of twice. Each position's hidden state is exactly what it is in its own unpacked sequence;
the last prompt position predicts the first token of both continuations. With a ~64-token prompt and
two ~64-token responses that is a quarter fewer body tokens (and activations) per pair.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn

from shared.modeling import prompt_ids, response_ids


def encode(tokenizer, messages: list[dict], response: str, max_prompt: int,
           max_response: int, ended: bool = True) -> tuple[list[int], list[int]]:
    """(prompt ids keeping their end, response ids keeping their start, end-of-turn included unless
    the response was cut at the generation limit: `ended` False)."""
    p = prompt_ids(tokenizer, messages)[-max_prompt:]
    r = response_ids(tokenizer, response, ended)[:max_response]
    return p, r


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded
    positions: torch.Tensor  # [N] flat indices into B*T whose hidden state predicts a response token
    targets: torch.Tensor  # [N] the response tokens
    seq_index: torch.Tensor  # [N] which sequence each position belongs to
    n_tokens: torch.Tensor  # [B] response tokens per sequence
    # Packed rows (collate_pairs) only: position ids, and each position's segment (0 the shared
    # prompt, 1 chosen, 2 rejected, 3 padding); a position sees earlier ones of segment 0 and its own.
    position_ids: torch.Tensor | None = None  # [R, T]
    segments: torch.Tensor | None = None  # [R, T]

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) if t is not None else None
                       for t in (self.input_ids, self.positions, self.targets, self.seq_index, self.n_tokens,
                                 self.position_ids, self.segments)))


def collate(seqs: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    width = max(len(p) + len(r) - 1 for p, r in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    positions, targets, seq_index, n_tokens = [], [], [], []
    for b, (p, r) in enumerate(seqs):
        row = (p + r)[:-1]
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        start = b * width + len(p) - 1  # the last prompt position predicts the first response token
        positions.extend(range(start, start + len(r)))
        targets.extend(r)
        seq_index.extend([b] * len(r))
        n_tokens.append(len(r))
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)
    return Batch(ids, as_long(positions), as_long(targets), as_long(seq_index), as_long(n_tokens))


def collate_pairs(triples: list[tuple[list[int], list[int], list[int]]], pad_id: int) -> Batch:
    """One row per (prompt, chosen, rejected): prompt + chosen[:-1] + rejected[:-1], scored as the two
    sequences prompt + chosen and prompt + rejected. Sequence b is chosen of pair b, sequence B + b
    its rejected, as `collate(chosen + rejected)` numbers them."""
    width = max(len(p) + len(c) + len(r) - 2 for p, c, r in triples)
    n = len(triples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos_ids = torch.zeros((n, width), dtype=torch.long)
    segs = torch.full((n, width), 3, dtype=torch.long)
    chosen, rejected = ([], [], []), ([], [], [])  # (positions, targets, seq_index)
    for b, (p, c, r) in enumerate(triples):
        row = p + c[:-1] + r[:-1]
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        P, C = len(p), len(c)
        pos_ids[b, :len(row)] = torch.tensor(list(range(P + C - 1)) + list(range(P, P + len(r) - 1)))
        segs[b, :P], segs[b, P: P + C - 1], segs[b, P + C - 1: len(row)] = 0, 1, 2
        last = b * width + P - 1  # the last prompt position predicts the first token of both
        chosen[0].extend(range(last, last + C))
        rejected[0].extend([last] + list(range(last + C, last + C + len(r) - 1)))
        for part, seq, toks in ((chosen, b, c), (rejected, n + b, r)):
            part[1].extend(toks)
            part[2].extend([seq] * len(toks))
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)
    return Batch(ids, as_long(chosen[0] + rejected[0]), as_long(chosen[1] + rejected[1]),
                 as_long(chosen[2] + rejected[2]), as_long([len(c) for _, c, _ in triples] +
                                                           [len(r) for _, _, r in triples]), pos_ids, segs)


def packed_attention(config, position_ids: torch.Tensor, segments: torch.Tensor, dtype: torch.dtype):
    """Additive masks (0 = attend, the dtype's minimum = not) for packed rows: causal, within the
    shared prompt or the position's own segment, and for sliding-window layers within the window of
    position ids. A dict by layer type where the config names layer types (transformers takes that
    as is), else one [R, 1, T, T] mask. Additive, not boolean: eager attention adds the mask."""
    width = segments.shape[1]
    idx = torch.arange(width, device=segments.device)
    own = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])  # prompt or own segment
    seen = (idx[:, None] >= idx[None, :]) & own
    full = seen.unsqueeze(1)
    types = getattr(config, "layer_types", None)
    additive = lambda allowed: torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min)
    plain = additive(full)
    if not types:
        return plain
    window = getattr(config, "sliding_window", None)
    masks = {}
    for kind in set(types):
        if kind == "sliding_attention" and window:
            near = (position_ids[:, :, None] - position_ids[:, None, :]) < window
            masks[kind] = additive(full & near.unsqueeze(1))
        else:
            masks[kind] = plain
    return masks


def can_pack(model) -> bool:
    """Whether the model's attention takes the custom mask that packed rows need (eager and SDPA do;
    flash-attention kernels take none)."""
    config = getattr(model, "config", None)
    return "flash" not in str(getattr(config, "_attn_implementation", "") or "")


def length_batches(lengths: list[int], batch_size: int, seed: int, *, window: int = 32) -> list[list[int]]:
    """Batches of indices with little padding, in a seeded random order.

    Shuffle, cut into windows of `window` batches, sort each window by length, cut it into batches,
    then shuffle the batches: neighbours in length share a batch, yet batch contents and order
    change with the seed (plain global sorting would give identical batches every epoch)."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window
    batches = []
    for w in range(0, len(order), span):
        chunk = sorted(order[w: w + span], key=lambda i: lengths[i])
        batches += [chunk[i: i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class _HeadLogProb(torch.autograd.Function):
    """log softmax(h·Wᵀ)[target] per row of h, chunked over rows (see module docstring)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        jac = torch.empty_like(hidden) if need_h and not need_w else None
        log_z = torch.empty_like(out)
        for s in range(0, hidden.shape[0], chunk):
            h, t = hidden[s: s + chunk], targets[s: s + chunk]
            probs, tanh, lz, picked = _chunk_softmax(h, weight, t, softcap)
            out[s: s + len(h)] = picked - lz
            log_z[s: s + len(h)] = lz
            if jac is not None:
                jac[s: s + len(h)] = _logit_grad(probs, tanh, t, softcap).to(weight.dtype) @ weight
            del probs, tanh
        ctx.softcap, ctx.chunk = softcap, chunk
        if jac is not None:
            ctx.save_for_backward(jac)
        else:
            ctx.save_for_backward(hidden, weight, targets, log_z)
        ctx.jac_path = jac is not None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.jac_path:
            (jac,) = ctx.saved_tensors
            return (grad_out.unsqueeze(1) * jac).to(jac.dtype), None, None, None, None
        hidden, weight, targets, _ = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h, t = hidden[s: s + ctx.chunk], targets[s: s + ctx.chunk]
            probs, tanh, _, _ = _chunk_softmax(h, weight, t, ctx.softcap)
            g = _logit_grad(probs, tanh, t, ctx.softcap).mul_(grad_out[s: s + len(h)].unsqueeze(1))
            if grad_h is not None:
                grad_h[s: s + len(h)] = g.to(weight.dtype) @ weight
            if grad_w is not None:
                grad_w.addmm_(g.t(), h.float())
            del probs, tanh, g
        return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None


def _chunk_softmax(h, weight, targets, softcap):
    """Softmax probabilities of one chunk (computed in place in one [n, V] float32 buffer), the
    tanh of the soft-capped logits (or None), log Z and the targets' logits."""
    z = (h @ weight.t()).float()
    tanh = None
    if softcap:
        tanh = z.div_(softcap).tanh_()
        z = tanh * softcap
    picked = z.gather(1, targets.unsqueeze(1)).squeeze(1)
    top = z.amax(dim=1, keepdim=True)
    probs = z.sub_(top).exp_()
    total = probs.sum(dim=1, keepdim=True)
    probs.div_(total)
    return probs, tanh, (top + total.log()).squeeze(1), picked


def _logit_grad(probs, tanh, targets, softcap):
    """d log p[target] / d raw logits = (onehot − p), times the soft-cap's derivative 1 − tanh²."""
    g = probs.neg_()
    g.scatter_add_(1, targets.unsqueeze(1), torch.ones_like(targets, dtype=g.dtype).unsqueeze(1))
    if softcap:
        g.mul_(1 - tanh * tanh)
    return g


def causal_lm_parts(model):
    """(decoder body, lm_head weight, final logit soft-cap) of a plain or peft-wrapped causal LM."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    text_config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    return body, lm.get_output_embeddings().weight, getattr(text_config, "final_logit_softcapping", None)


class Scorer(nn.Module):
    """Per-sequence sums of response-token log-probs: forward(batch) -> [B] float32."""

    def __init__(self, model, chunk: int = 1024):
        super().__init__()
        self.model = model
        self.chunk = chunk

    def forward(self, input_ids, positions, targets, seq_index, n_seqs: int, position_ids=None, segments=None):
        body, weight, softcap = causal_lm_parts(self.model)
        if segments is None:
            hidden = body(input_ids=input_ids, use_cache=False).last_hidden_state
        else:
            mask = packed_attention(body.config, position_ids, segments, weight.dtype)
            hidden = body(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                          use_cache=False).last_hidden_state
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        logp = _HeadLogProb.apply(picked, weight, targets, softcap, self.chunk)
        return torch.zeros(n_seqs, dtype=logp.dtype, device=logp.device).index_add(0, seq_index, logp)


def score(scorer: nn.Module, batch: Batch) -> torch.Tensor:
    return scorer(batch.input_ids, batch.positions, batch.targets, batch.seq_index, len(batch.n_tokens),
                  batch.position_ids, batch.segments)


@torch.no_grad()
def score_all(scorer: nn.Module, seqs: list[tuple[list[int], list[int]]], pad_id: int, device,
              batch_size: int) -> list[float]:
    """Log π(response|prompt) for every (prompt, response), batched by length, in input order."""
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        values = score(scorer, collate([seqs[i] for i in idx], pad_id).to(device))
        for i, v in zip(idx, values.tolist()):
            out[i] = v
    return out


@torch.no_grad()
def score_pairs_all(scorer: nn.Module, triples: list[tuple[list[int], list[int], list[int]]], pad_id: int,
                    device, batch_size: int) -> list[tuple[float, float]]:
    """(log π(chosen|prompt), log π(rejected|prompt)) per (prompt, chosen, rejected), prompts shared."""
    out: list = [None] * len(triples)
    order = sorted(range(len(triples)), key=lambda i: sum(map(len, triples[i])))
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        values = score(scorer, collate_pairs([triples[i] for i in idx], pad_id).to(device)).tolist()
        for j, i in enumerate(idx):
            out[i] = (values[j], values[len(idx) + j])
    return out
