"""Generation throughput of our `local` backend against peers measured in the same run.

Workloads (`--workload`):
- `eval`: a round's held-out evaluation: 150 prompts of the built-in curriculum's held-out split,
  one greedy answer each, up to 160 new tokens, stopping at end of turn (the answers' lengths vary).
- `round`: sampling for training: 32 chat prompts x 4 samples x 64 new tokens, temperature 0.7
  (`--top-k 40`: ReST-EM's filter, which our exact bfloat16 head serves).

Peers (`--peers`, comma-separated):
- `today`: the local backend as it was at `--today-rev` (static length-sorted batches of up to 64
  rows), called the way the generation task called it, `--today-batch` (8) prompts per call. Same
  stopping rule as ours, so both do the same job; the ratio is wall time over wall time, and the
  script counts how many greedy answers are identical.
- `naive`: `model.generate` once per prompt and sample (batch 1, SPIN's HF generation script).
- `llamacpp`: llama.cpp (llama-cpp-python) on the Q4_K_M GGUF file the model package ships, at
  batch 1 and in its batched mode (bench/llamacpp_peer.py). Quantized weights give different
  answers of different lengths, so for this peer both sides are forced to exactly `--new-tokens`
  tokens per answer (ours with ignore_eos, llama.cpp with end-of-turn and EOS banned) and tokens/s
  compare directly.
`naive` and llama.cpp at batch 1 decode one sequence at a time, so `--single-prompts K` times them
on the first K prompts only: their tokens/s does not depend on how many prompts follow.

Also printed: our achieved GFLOP/s (2 x parameters FLOPs per generated token) against a float32
matmul peak measured in the same run (the better of a window before and one after our run), and
the machine's load average.

    python bench/generation.py --workload eval --peers today,llamacpp --single-prompts 16
    python bench/generation.py --quick              # round workload, 8 x 2 x 16, naive peer

Model loading and a short warm-up are not timed. The last line is `ratio=<ours / first peer>`.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, even where another one is installed editable

import torch  # noqa: E402

from services.generation.base import ModelRef, SamplingParams  # noqa: E402
from services.generation.local import LocalBackend  # noqa: E402
from shared.modeling import load_base, load_tokenizer, prompt_ids  # noqa: E402

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


def load_today(rev: str):
    """The local backend module as it was at git revision `rev` (today's code, for the peer)."""
    source = subprocess.run(["git", "show", f"{rev}:services/generation/local.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("today_local")
    exec(compile(source, f"{rev}:services/generation/local.py", "exec"), module.__dict__)
    return module


def matmul_peak(seconds: float = 3.0) -> tuple[float, float]:
    """Float32 GFLOP/s of a [256 x 640] @ [640 x 32768] product (an LM-head-shaped matmul): the
    best wall-clock rate in the window, and the rate per CPU-second of this process (which a busy
    machine disturbs far less)."""
    a, b = torch.randn(256, 640), torch.randn(640, 32768)
    a @ b
    flop = 2 * 256 * 640 * 32768
    best, count, cpu0, end = 0.0, 0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        a @ b
        best, count = max(best, flop / (time.perf_counter() - t) / 1e9), count + 1
    return best, flop * count / (time.process_time() - cpu0) / 1e9


def run_backend(backend, model_name: str, prompts, params: SamplingParams, per_call: int | None):
    """Completions and wall time; `per_call` prompts per backend call (None: all at once)."""
    per_call = per_call or len(prompts)
    out, start = [], time.perf_counter()
    for i in range(0, len(prompts), per_call):
        out += backend.generate(prompts[i:i + per_call], ModelRef(model_name), params)
    return out, time.perf_counter() - start


def naive(model, tok, prompts, params: SamplingParams) -> tuple[int, float]:
    """One generate call per prompt and sample, as SPIN's HF script samples; forced lengths."""
    tokens, start = 0, time.perf_counter()
    for messages in prompts:
        ids = torch.tensor([prompt_ids(tok, messages)], device=model.device)
        for _ in range(params.n):
            kw = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k) \
                if params.temperature else dict(do_sample=False)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=params.max_new_tokens,
                                 min_new_tokens=params.max_new_tokens, pad_token_id=tok.pad_token_id, **kw)
            tokens += out.shape[1] - ids.shape[1]
    return tokens, time.perf_counter() - start


def workload(args) -> tuple[list, SamplingParams]:
    if args.workload == "eval":
        from services.curriculum.generator import build_curriculum

        items = build_curriculum(n_train=0, n_heldout=args.prompts or 150, n_eft=0)["heldout"]
        prompts = [[{"role": "user", "content": it["prompt"]}] for it in items]
        return prompts, SamplingParams(n=1, temperature=0, max_new_tokens=args.new_tokens or 160, seed=0)
    n = args.prompts or 32
    prompts = [[{"role": "user", "content": TASKS[i % len(TASKS)]}] for i in range(n)]
    return prompts, SamplingParams(n=args.samples or 4, temperature=0.7, top_p=1.0, top_k=args.top_k,
                                   max_new_tokens=args.new_tokens or 64, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma", help="'gemma' or a local model directory")
    parser.add_argument("--workload", choices=["eval", "round"], default="round")
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None, help="samples per prompt (round workload)")
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--top-k", type=int, default=0,
                        help="round workload: top-k filter (ReST-EM samples with 40; 0 = off)")
    parser.add_argument("--peers", default="naive", help="comma-separated: today, naive, llamacpp")
    parser.add_argument("--per-call", type=int, default=None,
                        help="prompts per call of ours (default all; 64 = a generation shard's default)")
    parser.add_argument("--today-rev", default="c139267", help="git revision of 'today's code'")
    parser.add_argument("--today-batch", type=int, default=8, help="prompts per call of today's code")
    parser.add_argument("--today-prompts", type=int, default=None,
                        help="time today's code on the first K prompts only (its calls are independent "
                             "batches of --today-batch prompts, so its tokens/s does not depend on the rest)")
    parser.add_argument("--memory-mb", type=int, default=2048, help="our rows-in-flight memory budget")
    parser.add_argument("--dtype", default="auto", help="our weights: auto (float32 on CPU) | bfloat16 (opt-in)")
    parser.add_argument("--single-prompts", type=int, default=None,
                        help="time batch-1 peers (naive, llama.cpp batch 1) on the first K prompts only")
    parser.add_argument("--llamacpp-parallel", default="8,32,64", help="llama.cpp batched sizes to try")
    parser.add_argument("--quick", action="store_true", help="round workload, 8 prompts x 2 samples x 16 tokens")
    args = parser.parse_args()
    if args.quick:
        args.workload, args.prompts, args.samples, args.new_tokens = "round", 8, 2, 16
    torch.manual_seed(0)
    peers = [p for p in args.peers.split(",") if p]
    prompts, params = workload(args)
    t0 = time.perf_counter()
    tok, model = load_tokenizer(args.model), load_base(args.model)
    n_params = sum(p.numel() for p in model.parameters())
    peak, peak_cpu = matmul_peak()
    print(f"model {args.model} ({n_params / 1e6:.0f}M params) loaded in {time.perf_counter() - t0:.1f} s on "
          f"{model.device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}); load average {os.getloadavg()[0]:.1f}; matmul peak {peak:.1f} GFLOP/s "
          f"({peak_cpu:.1f} per CPU-second)", flush=True)
    print(f"workload {args.workload}: {len(prompts)} prompts x {params.n} x up to {params.max_new_tokens} new "
          f"tokens, temperature {params.temperature}", flush=True)
    ours_backend = LocalBackend(memory_mb=args.memory_mb, dtype=args.dtype)
    warm = SamplingParams(n=1, max_new_tokens=4, seed=1)
    run_backend(ours_backend, args.model, prompts[:2], warm, None)
    rows: list[tuple[str, int, float, float]] = []  # name, tokens, wall seconds, CPU seconds
    ratios: list[tuple[str, float]] = []

    cpu_mark = [time.process_time()]

    def report(name: str, tokens: int, seconds: float, note: str = "") -> float:
        """Print a timed phase; CPU seconds are this process's since the previous report."""
        cpu = time.process_time() - cpu_mark[0]
        rows.append((name, tokens, seconds, cpu))
        print(f"  {name}: {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s, {cpu:.0f} CPU-s = "
              f"{tokens / cpu:.2f} tokens per CPU-s {note}(load {os.getloadavg()[0]:.1f})", flush=True)
        cpu_mark[0] = time.process_time()
        return tokens / seconds

    encoded_len = sum(len(prompt_ids(tok, p)) for p in prompts)
    cpu_mark[0] = time.process_time()
    cpu_start = time.process_time()
    ours_out, ours_s = run_backend(ours_backend, args.model, prompts, params, args.per_call)
    ours_tokens = sum(c.token_count for per in ours_out for c in per)
    ours_rate = report("ours", ours_tokens, ours_s, f"[{ours_backend.last_slots} rows in flight] ")
    gflops = 2 * n_params * ours_tokens / ours_s / 1e9
    per_cpu = 2 * n_params * ours_tokens / (time.process_time() - cpu_start) / 1e9
    again = matmul_peak()  # again after ours: on a busy machine one window can be unlucky
    peak, peak_cpu = max(peak, again[0]), max(peak_cpu, again[1])
    print(f"  ours: {gflops:.1f} GFLOP/s on generated tokens ({gflops / peak:.0%} of the matmul peak {peak:.1f}), "
          f"{2 * n_params * (ours_tokens + encoded_len * params.n) / ours_s / 1e9:.1f} with prefill; "
          f"{per_cpu:.1f} GFLOP per CPU-second ({per_cpu / peak_cpu:.0%} of the matmul's {peak_cpu:.1f})", flush=True)
    cpu_mark[0] = time.process_time()

    if "today" in peers:
        today = load_today(args.today_rev).LocalBackend()
        run_backend(today, args.model, prompts[:2], warm, None)
        cpu_mark[0] = time.process_time()
        subset = prompts[:args.today_prompts] if args.today_prompts else prompts
        out, secs = run_backend(today, args.model, subset, params, args.today_batch)
        tokens = sum(c.token_count for per in out for c in per)
        same = sum(a.text == b.text for pa, pb in zip(out, ours_out) for a, b in zip(pa, pb))
        mine = sum(c.token_count for per in ours_out[:len(subset)] for c in per)
        rate = report("today", tokens, secs, f"[{args.today_batch} prompts per call, first {len(subset)} prompts "
                                             f"({mine} tokens on our side); {same}/{len(subset) * params.n} "
                                             f"answers identical to ours] ")
        ratios.append(("today (tokens/s)", ours_rate / rate))
    if "naive" in peers:
        subset = prompts[:args.single_prompts] if args.single_prompts else prompts
        forced = LocalBackend(memory_mb=args.memory_mb, ignore_eos=True, dtype=args.dtype)
        _, fs = run_backend(forced, args.model, prompts, params, args.per_call) if params.temperature == 0 else (0, 0)
        mine = report("ours, forced lengths", len(prompts) * params.n * params.max_new_tokens, fs) if fs else ours_rate
        cpu_mark[0] = time.process_time()
        tokens, secs = naive(model, tok, subset, params)
        ratios.append(("naive", mine / report("naive", tokens, secs, f"[first {len(subset)} prompts] ")))
    if "llamacpp" in peers:
        from llamacpp_peer import LlamaCpp  # bench/ is on sys.path as the script's folder

        forced = LocalBackend(memory_mb=args.memory_mb, ignore_eos=True, dtype=args.dtype)
        _, fs = run_backend(forced, args.model, prompts, params, args.per_call)
        mine = report("ours, forced lengths", len(prompts) * params.n * params.max_new_tokens, fs,
                      f"[{forced.last_slots} rows in flight] ")
        lc = LlamaCpp(threads=torch.get_num_threads())
        texts = [[{"role": "user", "content": p[-1]["content"]}] for p in prompts]
        subset = texts[:args.single_prompts] if args.single_prompts else texts
        cpu_mark[0] = time.process_time()
        tokens, secs = lc.generate(subset, params, parallel=1)
        ratios.append(("llama.cpp batch 1", mine / report("llama.cpp batch 1", tokens, secs,
                                                          f"[first {len(subset)} prompts] ")))
        best = 0.0
        for par in [int(p) for p in args.llamacpp_parallel.split(",") if p]:
            tokens, secs = lc.generate(texts, params, parallel=par)
            best = max(best, report(f"llama.cpp batched {par}", tokens, secs))
        ratios.append(("llama.cpp batched (best)", mine / best))
    per_cpu_rate = {name: tokens / cpu for name, tokens, _, cpu in rows}
    for peer in [name for name, *_ in rows if not name.startswith("ours")]:
        mine = per_cpu_rate["ours, forced lengths" if "ours, forced lengths" in per_cpu_rate and peer != "today"
                            else "ours"]
        print(f"per CPU-second: ours / {peer} = {mine / per_cpu_rate[peer]:.2f}")
    for name, r in ratios:
        print(f"ratio vs {name}: {r:.2f}")
    print(f"ratio={ratios[0][1]:.2f}" if ratios else "ratio=nan (no peer)")


if __name__ == "__main__":
    main()
