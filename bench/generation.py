"""Sampling throughput of our `local` backend against the naive loop, on Gemma 3 270M.

The peer is what SPIN's Hugging Face generation script does: one `model.generate` call per prompt
and per sample (batch size 1). Ours batches prompts in length-sorted buckets, prefills each prompt
once for its n samples and drops finished rows from the batch.

Both draw the same prompts with the same sampling settings (temperature 0.7, top-p 1.0) in the
same run, and both are forced to produce exactly --new-tokens tokens per sample (the peer with
min_new_tokens, ours with ignore_eos), so tokens/s is generated tokens over wall time and the two
rates are directly comparable. Model loading and a short warm-up are not timed.

    python bench/generation.py            # 32 prompts x 4 samples x 64 new tokens
    python bench/generation.py --quick    # 8 prompts x 2 samples x 16 new tokens, under a minute
    python bench/generation.py --naive-prompts 8   # time the slow peer on a quarter of the prompts

The last line is `ratio=<ours tokens/s / naive tokens/s>`.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from services.generation.base import ModelRef, SamplingParams
from services.generation.local import LocalBackend
from shared.modeling import load_base, load_tokenizer, prompt_ids

TASKS = [
    "Write a short poem about the sea.", "Explain why the sky is blue.", "List three fruits.",
    "What is the capital of France?", "Summarize the story of Cinderella in one sentence.",
    "Translate 'good morning' into Spanish.", "Give me a title for a blog post about running.",
    "What is two plus two?", "Describe a cat in three words.", "Why do leaves change colour in autumn?",
    "Write a haiku about winter.", "Name a famous scientist and what they discovered.",
    "How do I boil an egg?", "Write a limerick about a dog.", "What is photosynthesis?",
    "Suggest a name for a coffee shop.", "Explain gravity to a child.", "What are the primary colours?",
    "Write one sentence about the moon.", "Give three tips for better sleep.", "What is a noun?",
    "Describe the taste of lemon.", "Write a tweet about Monday mornings.", "What is the boiling point of water?",
    "Recommend a book for a long flight.", "Explain what a computer does.", "Write a riddle about time.",
    "List four seasons of the year.", "What does a bee make?", "Describe your ideal weekend.",
    "Write a thank-you note to a teacher.", "What is the largest ocean on Earth?",
]


def naive(model, tok, prompts, params: SamplingParams) -> tuple[int, float]:
    """One generate call per prompt and sample, as SPIN's HF script samples."""
    tokens, start = 0, time.perf_counter()
    for messages in prompts:
        ids = torch.tensor([prompt_ids(tok, messages)], device=model.device)
        for _ in range(params.n):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 temperature=params.temperature, top_p=params.top_p, top_k=0,
                                 max_new_tokens=params.max_new_tokens, min_new_tokens=params.max_new_tokens,
                                 pad_token_id=tok.pad_token_id)
            tokens += out.shape[1] - ids.shape[1]
    return tokens, time.perf_counter() - start


def ours(backend: LocalBackend, model_name: str, prompts, params: SamplingParams) -> tuple[int, float]:
    start = time.perf_counter()
    out = backend.generate(prompts, ModelRef(model_name), params)
    elapsed = time.perf_counter() - start
    return sum(c.token_count for per_prompt in out for c in per_prompt), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma", help="'gemma' or a local model directory")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-rows", type=int, default=None, help="our max_batch_rows (default: backend's)")
    parser.add_argument("--naive-prompts", type=int, default=None,
                        help="time the naive loop on only the first K prompts (all their samples); its "
                             "tokens/s does not depend on the others, as it runs one sequence at a time")
    parser.add_argument("--quick", action="store_true", help="8 prompts x 2 samples x 16 new tokens")
    args = parser.parse_args()
    if args.quick:
        args.prompts, args.samples, args.new_tokens = 8, 2, 16
    torch.manual_seed(0)

    prompts = [[{"role": "user", "content": TASKS[i % len(TASKS)]}] for i in range(args.prompts)]
    params = SamplingParams(n=args.samples, temperature=0.7, top_p=1.0, max_new_tokens=args.new_tokens, seed=0)
    t0 = time.perf_counter()
    tok, model = load_tokenizer(args.model), load_base(args.model)
    backend = LocalBackend(max_batch_rows=args.batch_rows, ignore_eos=True)
    print(f"model {args.model} loaded in {time.perf_counter() - t0:.1f} s on {model.device} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}); {args.prompts} prompts x {args.samples} samples x "
          f"{args.new_tokens} new tokens", flush=True)

    warm = SamplingParams(n=1, max_new_tokens=4, seed=1)  # first-call costs out of the timings
    naive(model, tok, prompts[:1], warm)
    ours(backend, args.model, prompts[:2], warm)

    ours_tokens, ours_s = ours(backend, args.model, prompts, params)
    print(f"ours done: {ours_tokens} tokens in {ours_s:.1f} s; now the naive loop", flush=True)
    naive_set = prompts[:args.naive_prompts] if args.naive_prompts else prompts
    naive_tokens, naive_s = naive(model, tok, naive_set, params)
    per_prompt = args.samples * args.new_tokens
    assert (ours_tokens, naive_tokens) == (len(prompts) * per_prompt, len(naive_set) * per_prompt), \
        (ours_tokens, naive_tokens)
    ours_rate, naive_rate = ours_tokens / ours_s, naive_tokens / naive_s
    print(f"{'':8} {'tokens':>8} {'seconds':>9} {'tokens/s':>9}")
    print(f"{'ours':8} {ours_tokens:>8} {ours_s:>9.1f} {ours_rate:>9.1f}")
    print(f"{'naive':8} {naive_tokens:>8} {naive_s:>9.1f} {naive_rate:>9.1f}"
          + (f"   (first {len(naive_set)} prompts)" if len(naive_set) < len(prompts) else ""))
    print(f"ratio={ours_rate / naive_rate:.2f}")


if __name__ == "__main__":
    main()
