"""Can the verifier teach a 270M model to judge? Judge bootstrap at scale, measured on a probe.

Self-Rewarding and SPaR need a model that judges its own answers, and the chat-capable start cannot:
its rubric and refiner judgments rarely parse (docs/results.md). Both methods' round 1 trains the
judge on the model's own samples of training prompts, labelled by the IFEval verifier and written in
the judges' exact output formats (services/curriculum/judge_data.py); inside a run that data comes
from the run's own prompts, a few dozen examples at the demo's size. This bench measures what the same
bootstrap gives with several hundred prompts:

1. curriculum *training* prompts (`build_curriculum(n_train=1000)`, the same draw the chat start was
   trained on; the held-out split is never touched): `--boot` of them for the bootstrap data and a
   disjoint probe of `--probe` prompts at the end of the list;
2. the start samples `--samples` answers per bootstrap prompt (SPaR's demo sampling: T 0.9, 96 tokens);
3. the verifier labels them and judge_data writes refiner judgments (yes/no balanced), programmatic
   refinements and rubric judgments; LoRA SFT of the start on all of them (`--epochs`, `--lr`);
4. `judge_agreement` on the probe for the start (unless --skip-start) and the trained judge: parseable
   rate, refiner accuracy and balanced accuracy, rubric pairwise accuracy, per instruction type.

    .venv/bin/python bench/judges.py                       # 240 bootstrap prompts, 48 probe prompts
    .venv/bin/python bench/judges.py --boot 24 --epochs 2  # the demo run's size, for comparison

Prints one JSON summary line per judge and writes everything to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def summary(name: str, report: dict) -> dict:
    ref, rub = report["refiner"], report["rubric"]
    return {"judge": name, "responses": report["responses"], "passing": report["passing"],
            "parseable": report["parseable"], "refiner_accuracy": ref.get("accuracy"),
            "refiner_balanced_accuracy": ref.get("balanced_accuracy"), "refiner_decided": ref.get("decided"),
            "rubric_pairwise_accuracy": rub.get("accuracy"), "rubric_pairs": rub.get("pairs")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gemma-chat")
    ap.add_argument("--boot", type=int, default=240, help="training prompts whose samples teach the judge")
    ap.add_argument("--probe", type=int, default=48, help="other training prompts the judge is measured on")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--new-tokens", type=int, default=96)
    ap.add_argument("--judge-tokens", type=int, default=160)
    ap.add_argument("--votes", type=int, default=3)
    ap.add_argument("--kinds", default="refiner,refinement,rubric")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--skip-start", action="store_true", help="do not measure the untrained start's judges")
    ap.add_argument("--out", type=Path, default=Path("judges.json"))
    args = ap.parse_args()

    from services.cli import _ensure_chat_start
    from services.curriculum.generator import build_curriculum
    from services.curriculum.judge_data import judge_examples
    from services.generation.base import ModelRef, SamplingParams
    from services.generation.registry import get_backend
    from services.judging.agreement import judge_agreement
    from services.training.config import TrainConfig
    from services.training.trainer import train_sft
    from shared.modeling import resolve_base

    if args.model == "gemma-chat":
        _ensure_chat_start()
    work = Path(tempfile.mkdtemp(prefix="autodidact-judges-"))
    train = [it for it in build_curriculum(seed=0, n_train=1000, n_heldout=0, n_eft=0)["train"][200:]
             if it["constraints"]]
    if args.boot + args.probe > len(train):
        raise SystemExit(f"--boot + --probe must be at most {len(train)}")
    boot, probe = train[:args.boot], train[-args.probe:]
    backend = get_backend("local")
    results: dict = {"settings": {k: str(v) for k, v in vars(args).items()}, "workdir": str(work)}
    t0 = time.monotonic()

    chats = [[{"role": "user", "content": it["prompt"]}] for it in boot]
    outs = backend.generate(chats, ModelRef(args.model), SamplingParams(
        n=args.samples, temperature=args.temperature, top_k=40, max_new_tokens=args.new_tokens, seed=1))
    samples = [{"messages": chat, "response": c.text, "constraints": it["constraints"],
                "finish_reason": c.finish_reason}
               for it, chat, cs in zip(boot, chats, outs) for c in cs]
    kinds = tuple(args.kinds.split(","))
    made = judge_examples(samples, kinds=kinds, seed=0)
    examples = [e for k in kinds for e in made[k]]
    results["data"] = {"labelled_samples": len(samples), **{f"{k}_examples": len(made[k]) for k in kinds},
                       "seconds": round(time.monotonic() - t0)}
    print(json.dumps({"data": results["data"]}), flush=True)

    t1 = time.monotonic()
    cfg = TrainConfig(loss="sft", learning_rate=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                      checkpoint_every=0, max_prompt_tokens=768, max_response_tokens=256)
    adapter = work / "judge"
    train_summary = train_sft(base_model=str(resolve_base(args.model)), examples=examples, out_dir=adapter,
                              config=cfg)
    results["train"] = {"seconds": round(time.monotonic() - t1),
                        **{k: v for k, v in train_summary.items() if not isinstance(v, (list, dict))}}
    print(json.dumps({"train": results["train"]}, default=str), flush=True)

    judges = [("bootstrapped", ModelRef(args.model, adapter_path=str(adapter)))]
    if not args.skip_start:
        judges.append(("start", ModelRef(args.model)))
    for name, ref in judges:
        t2 = time.monotonic()
        report = judge_agreement(probe, backend=backend, model=ref, samples_per_prompt=1, votes=args.votes,
                                 max_new_tokens=args.judge_tokens)
        results[name] = report | {"seconds": round(time.monotonic() - t2)}
        args.out.write_text(json.dumps(results, indent=1, default=str))
        print(json.dumps(summary(name, report) | {"seconds": results[name]["seconds"]}), flush=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
