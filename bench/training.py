"""Pairwise (DPO / SPIN sigmoid) LoRA training: our train_pairs against TRL's DPOTrainer.

Same base model, same deterministic synthetic preference pairs (prompts and responses of about
`--tokens` tokens each), one epoch, same LoRA (r 16, alpha 32, the seven projection modules), lr,
batch size, β = 0.1, sigmoid loss, linear schedule with 10 % warmup (ours starts warm-up at
1/(warm-up steps + 1) of the rate where TRL starts at 0: the same work per step), clipping 1.0, float32, no
gradient checkpointing, reference = the base with the adapter disabled (TRL's default with a
peft_config) and the same maximum lengths. Each trainer runs in its own subprocess so that peak
RSS (ru_maxrss) is its own; the wall time counts everything from loading the model to the end of
training (TRL: model load + DPOTrainer init, which tokenizes, + train(); ours: the train_pairs
call, which loads, tokenizes, scores the reference and writes the adapter).

    python bench/training.py                 # Gemma 3 270M, 64 pairs
    python bench/training.py --quick         # 16 pairs
    python bench/training.py --model DIR     # any local model directory (e.g. a tiny test model)

Last line: ratio=<our pairs/s ÷ TRL pairs/s>.
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "sea", "sky", "blue", "poem", "write", "short", "answer", "explain", "why", "three", "fruits", "apple", "banana", "cherry", "river", "mountain", "light", "shadow", "morning", "evening", "garden", "stone", "listen", "carefully", "because", "every", "story", "needs", "a", "beginning", "middle", "and", "end", "with", "words", "that", "matter", "to", "people", "who", "read", "them", "slowly"]


def make_pairs(tokenizer, n: int, tokens: int, seed: int = 0) -> list[dict]:
    """Deterministic pairs whose prompt and responses are each about `tokens` tokens (±12 %)."""
    rng = random.Random(seed)

    def text(target: int) -> str:
        words = []
        while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < target:
            words.append(rng.choice(WORDS))
        return " ".join(words)

    out = []
    for _ in range(n):
        size = lambda: max(4, int(tokens * rng.uniform(0.88, 1.12)))
        out.append({"messages": [{"role": "user", "content": text(size())}],
                    "chosen": text(size()), "rejected": text(size())})
    return out


def run_ours(args, pairs) -> float:
    from services.training.config import TrainConfig
    from services.training.trainer import train_pairs

    cfg = TrainConfig(loss="sigmoid", beta=0.1, learning_rate=args.lr, epochs=1, batch_size=args.batch_size,
                      warmup_ratio=0.1, schedule="linear", max_grad_norm=1.0, seed=0,
                      max_prompt_tokens=args.max_prompt, max_response_tokens=args.max_response,
                      checkpoint_every=0, device=args.device)
    t0 = time.perf_counter()
    train_pairs(base_model=args.model, pairs=pairs, out_dir=Path(args.workdir) / "ours", config=cfg)
    return time.perf_counter() - t0


def run_trl(args, pairs) -> float:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from services.training.config import DEFAULT_TARGETS
    from shared.modeling import load_tokenizer, resolve_base

    tok = load_tokenizer(args.model)
    rows = [{"prompt": p["messages"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
             "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs]
    cpu = args.device == "cpu" or not torch.cuda.is_available()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(resolve_base(args.model)), dtype=torch.float32)
    config = DPOConfig(output_dir=str(Path(args.workdir) / "trl"), beta=0.1, loss_type=["sigmoid"],
                       learning_rate=args.lr, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
                       gradient_accumulation_steps=1, warmup_steps=0.1, lr_scheduler_type="linear",
                       max_grad_norm=1.0, seed=0, bf16=False, fp16=False, gradient_checkpointing=False,
                       max_length=args.max_prompt + args.max_response, use_cpu=cpu, report_to=[],
                       save_strategy="no", logging_steps=10 ** 6, disable_tqdm=True, dataloader_num_workers=0)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=list(DEFAULT_TARGETS),
                      task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=lora)
    trainer.train()
    return time.perf_counter() - t0


def child(args) -> None:
    import torch

    from shared.modeling import load_tokenizer

    torch.set_num_threads(args.threads) if args.threads else None
    pairs = make_pairs(load_tokenizer(args.model), args.pairs, args.tokens)
    seconds = (run_ours if args.run == "ours" else run_trl)(args, pairs)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    Path(args.result).write_text(json.dumps({"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB
                                             "cpu_seconds": usage.ru_utime + usage.ru_stime}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="16 pairs")
    ap.add_argument("--tokens", type=int, default=64, help="approximate prompt and response length")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-7)
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--max-response", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--order", default="ours,trl", help="which trainers to run, in this order")
    ap.add_argument("--workdir", default="/tmp/autodidact-bench-training")
    ap.add_argument("--run", choices=["ours", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.pairs = 16
    if args.run:
        return child(args)

    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.order.split(","):
        result = Path(args.workdir) / f"{name}.json"
        result.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--run", name, "--result", str(result)] + [
            a for a in sys.argv[1:] if a != "--quick"] + (["--pairs", str(args.pairs)])
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if name == "trl" else None)
        results[name] = json.loads(result.read_text())
        r = results[name]
        print(f"{name}: {args.pairs} pairs in {r['seconds']:.1f} s = {args.pairs / r['seconds']:.3f} pairs/s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB, process CPU time {r['cpu_seconds']:.0f} s", flush=True)
    if {"ours", "trl"} <= set(results):
        ours, trl = (args.pairs / results[k]["seconds"] for k in ("ours", "trl"))
        mem = results["ours"]["peak_rss_mib"] / results["trl"]["peak_rss_mib"]
        cpu = results["trl"]["cpu_seconds"] / results["ours"]["cpu_seconds"]
        # On a shared machine wall time depends on the neighbours; CPU time much less so.
        print(f"model={args.model} pairs={args.pairs} tokens~{args.tokens} batch={args.batch_size} "
              f"memory_ratio={mem:.2f} cpu_time_ratio={cpu:.2f}")
        print(f"ratio={ours / trl:.2f}")


if __name__ == "__main__":
    main()
