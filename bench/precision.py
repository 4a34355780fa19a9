"""Does opt-in bfloat16 generation change what the model can do? Held-out accuracy both ways.

`generation_dtype: bfloat16` runs the local backend's model in bfloat16 (2-3x faster on a CPU with
AVX-512 BF16, docs/benchmarks.md); its answers differ from float32's, so it is opt-in and has to
keep held-out accuracy within its interval. This evaluates the same held-out curriculum prompts
(the ones bench/improvement.py uses: topics never trained on, each with constraints) greedily
with float32 and with bfloat16 weights, and prints both accuracies with 95 % bootstrap intervals,
the paired difference with its interval, how many answers are identical, and the wall time
(model load and a short warm-up not timed).

    python bench/precision.py                      # gemma-chat, 160 held-out prompts, 160 new tokens
    python bench/precision.py --model gemma --n-eval 60

The last line is `ratio=<bfloat16 tokens/s ÷ float32 tokens/s>`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, even where another one is installed editable


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-chat")
    ap.add_argument("--n-eval", type=int, default=160)
    ap.add_argument("--new-tokens", type=int, default=160)
    args = ap.parse_args()

    from services.curriculum.generator import read_jsonl
    from services.generation.base import ModelRef
    from services.generation.local import LocalBackend
    from services.judging.evaluation import compare
    from services.judging.heldout import evaluate_model

    if args.model == "gemma-chat":
        from services.cli import _ensure_chat_start

        _ensure_chat_start()
    items = [it for it in read_jsonl(ROOT / "examples" / "curriculum_heldout.jsonl") if it["constraints"]]
    items = items[:args.n_eval]
    runs = {}
    for dtype in ("float32", "bfloat16"):
        backend = LocalBackend(dtype=dtype)
        evaluate_model(items[:2], backend=backend, model=ModelRef(args.model), max_new_tokens=4)  # load, warm up
        ev = evaluate_model(items, backend=backend, model=ModelRef(args.model), max_new_tokens=args.new_tokens)
        runs[dtype] = ev
        low, high = ev["ci95"]["prompt_strict_acc"]
        print(f"{dtype}: prompt strict {ev['prompt_strict_acc']:.3f} [{low:.3f}, {high:.3f}], instruction strict "
              f"{ev['instruction_strict_acc']:.3f}, cut at limit {ev['limit_rate']:.0%}, "
              f"{ev['generated_tokens']} tokens in {ev['seconds']:.0f} s "
              f"({ev['generated_tokens'] / ev['seconds']:.1f} tok/s)", flush=True)
    d = compare(runs["float32"], runs["bfloat16"])
    same = sum(a["response"] == b["response"] for a, b in zip(runs["float32"]["answers"], runs["bfloat16"]["answers"]))
    for key in ("prompt_strict_acc", "instruction_strict_acc"):
        x = d[key]
        print(f"bfloat16 - float32, {key}: {x['difference']:+.3f} [{x['low']:+.3f}, {x['high']:+.3f}] "
              f"on {d['n_paired']} prompts")
    print(f"identical answers: {same}/{len(items)}")
    rate = {k: v["generated_tokens"] / v["seconds"] for k, v in runs.items()}
    print(f"ratio={rate['bfloat16'] / rate['float32']:.2f}")


if __name__ == "__main__":
    main()
