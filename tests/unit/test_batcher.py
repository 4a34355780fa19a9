"""Continuous batching (services/generation/batcher.py) on a tiny Gemma 3 with a short sliding
window and both layer types: rows that finish mid-batch are replaced by waiting ones, the cache
window slides, and the tokens still equal transformers' own per-prompt greedy `generate`."""
from __future__ import annotations

import collections

import pytest
import torch

from services.generation.base import ModelRef, SamplingParams
from services.generation.batcher import Batcher, bytes_per_row
from services.generation.local import LocalBackend
from shared.modeling import load_tokenizer, prompt_ids

WORDS = "write a short poem about the sea explain why the sky is blue list three fruits apple banana cherry".split()
PROMPTS = [[{"role": "user", "content": " ".join(WORDS[k:k + 1 + 3 * k % 11])}] for k in range(7)]


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def windowed(tiny_model, request):
    """The tiny model with a 16-token window on layer 0 and full attention on layer 1, so answers
    of 40 tokens cross the window."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, sliding_window=16, layer_types=["sliding_attention", "full_attention"],
        attn_implementation=request.param, dtype=torch.float32)
    return model.eval(), load_tokenizer(tiny_model)


def _references(model, tok, encoded, max_new):
    out = []
    for ids in encoded:
        x = torch.tensor([ids])
        out.append(model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=max_new,
                                  eos_token_id=None, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist())
    return out


@pytest.mark.parametrize("head", ["float32", "bf16-exact"])
def test_greedy_equals_generate_with_refills_staggered_stops_and_a_sliding_window(windowed, head):
    model, tok = windowed
    encoded = [prompt_ids(tok, m) for m in PROMPTS]
    refs = _references(model, tok, encoded, 40)
    # A stop token that ends the references at different steps, so rows leave the batch at
    # different times and waiting rows take their slots.
    firsts = {}
    for ref in refs:
        for pos, t in enumerate(ref[1:], 1):
            firsts.setdefault(t, set()).add(pos) if t not in ref[1:pos] else None
    stop = max(firsts, key=lambda t: len(firsts[t]))
    assert len(firsts[stop]) >= 3, "the test needs a token that stops several rows at different steps"
    rows = sorted(((i, j) for i in range(len(encoded)) for j in range(2)), key=lambda r: (len(encoded[r[0]]), r))
    params = SamplingParams(n=2, temperature=0, max_new_tokens=40)
    batcher = Batcher(model, tok, encoded, rows, params, seed=0, slots=3, stops={stop}, slack=2, greedy_head=head)
    assert (batcher.head is not None) == (head == "bf16-exact")
    got = batcher.run()
    for (i, _), completion in zip(rows, got):
        want = refs[i][:refs[i].index(stop) + 1] if stop in refs[i] else refs[i]
        assert completion.token_count == len(want)
        assert completion.text == tok.decode([t for t in want if t != stop], skip_special_tokens=True)
        assert completion.finish_reason == ("stop" if stop in refs[i] else "length")
    assert batcher.slides >= 1, "the cache window should have slid left at least once"


def test_seeded_sampling_does_not_depend_on_rows_in_flight(tiny_model):
    params = SamplingParams(n=3, temperature=1.0, top_p=0.9, max_new_tokens=20, seed=11)
    runs = [LocalBackend(device="cpu", max_batch_rows=k).generate(PROMPTS, ModelRef(tiny_model), params)
            for k in (1, 4, 64)]
    texts = [[[c.text for c in per] for per in run] for run in runs]
    assert texts[0] == texts[1] == texts[2]
    lengths = collections.Counter(c.token_count for per in runs[0] for c in per)
    assert len(lengths) > 1, "rows should finish at different lengths for the comparison to mean something"


def test_rows_in_flight_follow_the_memory_budget(tiny_model):
    from shared.modeling import load_base

    model = load_base(tiny_model, device="cpu")
    params = SamplingParams(temperature=0, max_new_tokens=100)
    per_row = bytes_per_row(model, 10 + 100 + 64, sampling=False)
    # 2 layers x (k, v) x 1 kv head x head_dim 32 x columns x 4 bytes, plus two vocab-sized rows
    assert per_row == 2 * 2 * 32 * 174 * 4 + model.config.vocab_size * 4 * 2
    small, large = LocalBackend(device="cpu", memory_mb=1), LocalBackend(device="cpu", memory_mb=64)
    assert small.slots_for(model, 10, params) == 2**20 // per_row
    assert large.slots_for(model, 10, params) == 64 * 2**20 // per_row
    assert LocalBackend(device="cpu", memory_mb=64, max_batch_rows=5).slots_for(model, 10, params) == 5
    with pytest.raises(ValueError, match="memory_mb"):
        LocalBackend(device="cpu", memory_mb=0)


def test_exact_bf16_head_picks_the_float32_argmax_on_near_ties():
    """The bfloat16 head's candidates always contain the float32 argmax, also where the top logits
    are closer together than bfloat16 can tell apart, and banned ids are never picked."""
    from services.generation.greedy_head import ExactBf16Head

    torch.manual_seed(0)
    vocab, dim = 5000, 64
    weight = torch.randn(vocab, dim) / dim ** 0.5
    hidden = torch.randn(40, dim) * 30
    # Entry 7 is entry 11 plus a tiny step along row 0's hidden state, and row 0 leans towards
    # both: a float32 lead of 1e-3 that bfloat16 cannot resolve.
    hidden[0] += 40 * weight[11]
    weight[7] = weight[11] + hidden[0] / hidden[0].norm() ** 2 * 1e-3
    head = ExactBf16Head(weight)
    want = (hidden @ weight.t()).argmax(dim=1)
    assert torch.equal(head.argmax(hidden), want)
    low = (hidden.to(torch.bfloat16) @ weight.to(torch.bfloat16).t()).float().argmax(dim=1)
    assert not torch.equal(low, want), "bfloat16 alone should get some of these rows wrong"
    banned = want[:3].unique()
    again = head.argmax(hidden, banned)
    assert not torch.isin(again, banned).any()
    full = (hidden @ weight.t()).index_fill(-1, banned, float("-inf")).argmax(dim=1)
    assert torch.equal(again, full)
    assert head.fallbacks == 0 and head.candidates < 40 * 2 * 50  # a few candidates per row


def test_exact_bf16_head_keeps_the_float32_top_k_for_sampling():
    from services.generation.greedy_head import ExactBf16Head
    from services.generation.sampling import filter_logits

    torch.manual_seed(1)
    weight = torch.randn(3000, 48) / 7
    hidden = torch.randn(25, 48) * 20
    full = hidden @ weight.t()
    banned = torch.tensor([int(full[0].argmax())])
    full[:, banned] = float("-inf")
    values, ids = ExactBf16Head(weight).top_k_candidates(hidden, 40, banned)
    got, real = torch.full_like(full, float("-inf")), torch.isfinite(values)  # padding carries id 0
    got[torch.arange(len(ids)).unsqueeze(1).expand_as(ids)[real], ids[real]] = values[real]
    want = filter_logits(full, 40, 1.0)
    kept = filter_logits(got, 40, 1.0)
    assert torch.equal(torch.isfinite(kept), torch.isfinite(want))  # the same 40 entries per row
    assert torch.allclose(kept[torch.isfinite(kept)], want[torch.isfinite(want)], atol=1e-5)


def test_seeded_top_k_sampling_is_the_same_with_either_head(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    tok = load_tokenizer(tiny_model)
    encoded = [prompt_ids(tok, m) for m in PROMPTS]
    rows = [(i, j) for i in range(len(encoded)) for j in range(2)]
    params = SamplingParams(n=2, temperature=0.9, top_k=20, top_p=0.9, max_new_tokens=24)
    runs = {}
    for head in ("float32", "bf16-exact"):
        batcher = Batcher(model, tok, encoded, rows, params, seed=5, slots=4, stops=set(), greedy_head=head)
        assert (batcher.head is not None) == (head == "bf16-exact")
        runs[head] = [c.text for c in batcher.run()]
    assert runs["float32"] == runs["bf16-exact"]
    assert len(set(runs["float32"])) > 3  # sampling, not one answer repeated


def test_bfloat16_weights_are_opt_in(tiny_model):
    from shared.modeling import load_base

    params = SamplingParams(n=1, temperature=0, max_new_tokens=6, seed=0)
    out = LocalBackend(device="cpu", dtype="bfloat16").generate(PROMPTS[:3], ModelRef(tiny_model), params)
    assert [len(per) for per in out] == [1, 1, 1] and all(c.token_count >= 1 for per in out for c in per)
    assert load_base(tiny_model, device="cpu", dtype=torch.bfloat16).dtype == torch.bfloat16
    assert LocalBackend(device="cpu").dtype is None  # default: the device's own (float32 on CPU)
    with pytest.raises(ValueError, match="dtype"):
        LocalBackend(device="cpu", dtype="float16")


def test_top_k_draw_equals_the_full_vocabulary_draw():
    """Sampling on the k kept entries picks the token the full-vocabulary inverse CDF picks."""
    from services.generation.sampling import choose, filter_logits

    torch.manual_seed(3)
    logits = torch.randn(64, 5000) * 3
    uniforms = torch.rand(64)
    for top_p in (1.0, 0.8):
        params = SamplingParams(n=1, temperature=0.7, top_k=40, top_p=top_p, max_new_tokens=4)
        full = filter_logits(logits / 0.7, 40, top_p)
        cdf = torch.softmax(full, dim=-1).cumsum(-1)
        want = torch.searchsorted(cdf, (uniforms * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
        assert torch.equal(choose(logits, params, uniforms), want)


def test_prompts_per_call_follow_the_budget_not_the_last_call(tiny_model):
    """A small call (a warm-up) must not shrink the next calls: evaluation asks how many prompts
    to send per call, and 8 left the batch at 8 rows (37 instead of 164 tokens/s on Gemma)."""
    backend = LocalBackend(device="cpu", memory_mb=64)
    backend.generate(PROMPTS[:1], ModelRef(tiny_model), SamplingParams(n=1, temperature=0, max_new_tokens=2))
    assert backend.last_slots == 1 and backend.capacity > 8
    assert backend.batch_prompts(1) == 4 * backend.capacity


def test_top_k_candidates_draw_what_full_float32_logits_draw():
    from services.generation import greedy_head
    from services.generation.greedy_head import ExactBf16Head
    from services.generation.sampling import choose, choose_top_k

    torch.manual_seed(4)
    weight = torch.randn(4000, 48) / 7
    hidden = torch.randn(30, 48) * 20
    uniforms = torch.rand(30)
    params = SamplingParams(n=1, temperature=0.8, top_k=25, top_p=0.9, max_new_tokens=4)
    banned = torch.tensor([5, 17])
    full = (hidden @ weight.t()).index_fill(-1, banned, float("-inf"))
    want = choose(full, params, uniforms)
    head = ExactBf16Head(weight)
    values, ids = head.top_k_candidates(hidden, 25, banned)
    assert values.shape[1] >= 25 and torch.equal(choose_top_k(values, ids, params, uniforms), want)
    limit = greedy_head.MAX_CANDIDATES
    try:  # every row over the candidate limit: rows scored in full take the same path to the same draw
        greedy_head.MAX_CANDIDATES = 1
        values, ids = head.top_k_candidates(hidden, 25, banned)
        assert torch.equal(choose_top_k(values, ids, params, uniforms), want)
    finally:
        greedy_head.MAX_CANDIDATES = limit
