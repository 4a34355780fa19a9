"""Does the training guard catch a collapsing SPIN round? One SPIN round from the chat-capable start
with the old demo settings (lr 5e-5, 2 epochs, LoRA, β 0.1) — the settings that collapsed the model
into junk — trained twice on the same pairs: guards off, and guards at their defaults; plus the
new default learning rate (5e-6) with guards. Each result is evaluated on the held-out curriculum
prompts (prompt-level strict accuracy with its 95 % interval, paired difference against the start,
echo / token-limit / junk rates).

    .venv/bin/python bench/guards.py --train 64 --heldout 160      # about an hour on 2 CPU cores

Prints a markdown table (the one in docs/results.md) and writes the full metrics to --out.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-chat")
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--heldout", type=int, default=160)
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--out", type=Path, default=Path("guards.json"))
    args = ap.parse_args()

    from services.curriculum.generator import read_jsonl
    from services.generation.base import ModelRef, SamplingParams
    from services.generation.registry import get_backend
    from services.judging.evaluation import compare
    from services.judging.heldout import evaluate_model
    from services.methods.chat_start import build_chat_start
    from services.methods.spin import build_pairs
    from services.training.config import TrainConfig
    from services.training.trainer import train_pairs

    if args.model == "gemma-chat":
        build_chat_start()
    work = Path(tempfile.mkdtemp(prefix="autodidact-guards-"))
    backend = get_backend("local")
    train = read_jsonl(ROOT / "examples" / "curriculum_train.jsonl")[:args.train]
    heldout = [it for it in read_jsonl(ROOT / "examples" / "curriculum_heldout.jsonl") if it["constraints"]][:args.heldout]

    t0 = time.monotonic()
    chats = [[{"role": "user", "content": it["prompt"]}] for it in train]
    outs = backend.generate(chats, ModelRef(args.model), SamplingParams(n=1, temperature=0.8, top_p=0.95,
                                                                         max_new_tokens=96, seed=0))
    pairs, _ = build_pairs([{"id": i, "reference": it["reference"]} for i, it in enumerate(train)],
                           [{"prompt_id": i, "index": 0, "text": o[0].text} for i, o in enumerate(outs)])
    items = [{"messages": chats[p["prompt_id"]], "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    print(f"{len(items)} SPIN pairs sampled in {time.monotonic() - t0:.0f} s", flush=True)

    variants = {
        "lr 5e-5, guards off": {"learning_rate": 5e-5, "max_kl": 0, "max_reward_margin": 0},
        "lr 5e-5, guards on (defaults)": {"learning_rate": 5e-5},
        "lr 5e-6 (new default), guards on": {"learning_rate": 5e-6},
    }
    results: dict[str, dict] = {"start": evaluate_model(heldout, backend=backend, model=ModelRef(args.model),
                                                        max_new_tokens=args.new_tokens)}
    print("start evaluated", flush=True)
    for name, over in variants.items():
        cfg = TrainConfig(**{"loss": "sigmoid", "beta": 0.1, "epochs": 2, "batch_size": 4, "max_response_tokens": 128,
                             "checkpoint_every": 0, "warmup_ratio": 0.1, **over})
        steps: list[dict] = []
        out_dir = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        summary = train_pairs(base_model=args.model, pairs=items, out_dir=out_dir, config=cfg, on_step=steps.append)
        ev = evaluate_model(heldout, backend=backend, model=ModelRef(args.model, str(out_dir)),
                            max_new_tokens=args.new_tokens)
        results[name] = {**ev, "train": {**{k: v for k, v in summary.items() if not isinstance(v, dict)},
                                         "guard_stop": summary.get("guard_stop"), "steps": steps},
                         "vs_start": compare(results["start"], ev)}
        print(f"{name}: done", flush=True)

    print("\n| variant | steps run | last reward margin | last KL / token | guard | strict acc [95% CI] | "
          "change vs start [95% CI] | echo | limit | junk |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ci = r["ci95"]["prompt_strict_acc"]
        row = [name]
        if name == "start":
            row += ["", "", "", "", f"{r['prompt_strict_acc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", ""]
        else:
            last = r["train"]["steps"][-1] if r["train"]["steps"] else {}
            stop = r["train"]["guard_stop"]
            d = r["vs_start"]["prompt_strict_acc"]
            row += [str(len(r["train"]["steps"])), f"{last.get('margin', float('nan')):.2f}",
                    f"{last.get('kl', float('nan')):.3f}",
                    f"stopped at step {stop['step']} ({stop['metric']} {stop['value']:.2f})" if stop else "-",
                    f"{r['prompt_strict_acc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]",
                    f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"]
        row += [f"{r['echo_rate']:.0%}", f"{r['limit_rate']:.0%}", f"{r['junk_rate']:.0%}"]
        print("| " + " | ".join(row) + " |")
    args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
