"""Measured outcome of the four methods on Gemma 3 270M with the built-in curriculum.

An SFT start (SFT on the curriculum's gold answers, merged into the base), then `--rounds` rounds of
each method from it, all in embedded mode; prints held-out prompt-level strict accuracy per round
against the SFT start, wall time per stage, and the judge-agreement report of the SFT start (the
reason Self-Rewarding and SPaR may not improve a 270M model: it cannot judge itself).

    .venv/bin/python bench/improvement.py            # 48 train / 30 held-out prompts, 2 rounds
    .venv/bin/python bench/improvement.py --quick    # 12 / 10 prompts, 1 round, short answers

The last line is `ratio=<best method's final held-out accuracy ÷ the SFT start's>`.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EX = ROOT / "examples"


def subset(src: Path, n: int, out: Path) -> Path:
    lines = src.read_text().splitlines()[:n]
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--methods", default="spin,rest_em,self_reward,spar")
    ap.add_argument("--model", default="gemma")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-eval", type=int, default=None)
    args = ap.parse_args()
    n_train, n_eval, rounds, tokens = (12, 10, 1, 48) if args.quick else (48, 30, 2, 96)
    rounds, n_train, n_eval = args.rounds or rounds, args.n_train or n_train, args.n_eval or n_eval
    work = Path(tempfile.mkdtemp(prefix="autodidact-bench-"))

    from services import embedded
    from services.cli import DEMO_CONFIGS
    from services.judging.agreement import judge_agreement
    from services.curriculum.generator import read_jsonl
    from shared import crud
    from shared.db import session_scope
    from shared.modeling import merge_adapter
    from shared.models import ModelVersion

    embedded.configure(work / "bench.db", work / "artifacts")
    train = subset(EX / "curriculum_train.jsonl", n_train, work / "train.jsonl")
    heldout = subset(EX / "curriculum_heldout.jsonl", n_eval, work / "heldout.jsonl")
    eft = subset(EX / "demo_eft.jsonl", n_train, work / "eft.jsonl")

    def run(method: str, model: str, config: dict, n_rounds: int, sets=None) -> dict:
        t0 = time.monotonic()
        run_id = embedded.create_run(method=method, prompts=train, model=model, rounds=n_rounds, config=config,
                                     eval_prompts=heldout, config_sets=sets)
        embedded.drive(run_id, show_progress=False)
        with session_scope() as s:
            r = crud.get_run(s, run_id=run_id)
            rounds_ = crud.rounds_of_run(s, run_id=run_id)
            accs = [rounds_[0].metrics.get("eval_base", {}).get("prompt_strict_acc")] + \
                   [x.metrics.get("eval", {}).get("prompt_strict_acc") for x in rounds_]
            stages = {}
            for x in rounds_:
                for k, v in x.stages.items():
                    stages[k] = stages.get(k, 0.0) + (v.get("seconds") or 0.0)
            version = s.get(ModelVersion, rounds_[-1].produced_version_id or -1)
            uri = version.uri if version else None
            skipped = [json.dumps({k: v for k, v in x.metrics.get("train", {}).items() if k != "skipped"})
                       if x.metrics.get("train", {}).get("skipped") else None for x in rounds_]
            return {"status": r.status, "error": r.error, "acc": accs, "stages": stages, "uri": uri,
                    "skipped": skipped, "seconds": time.monotonic() - t0}

    results = {}
    sft = run("sft", args.model, {"learning_rate": 2e-4, "epochs": 2, "batch_size": 4, "max_new_tokens": tokens}, 1)
    results["sft"] = sft
    start_dir = merge_adapter(args.model, sft["uri"], work / "sft-start")
    for method in args.methods.split(","):
        cfg = {**DEMO_CONFIGS[method], "max_new_tokens": tokens}
        sets = {"eft_prompt_set_ids": eft} if method == "self_reward" else None
        if method == "self_reward":
            cfg["bootstrap_sft"] = False  # the SFT start is M1's instruction half; EFT rides along below
        results[method] = run(method, str(start_dir), cfg, rounds, sets)

    from services.generation.base import ModelRef
    from services.generation.registry import get_backend

    items = [it for it in read_jsonl(heldout) if it.get("constraints")][:8]
    agreement = judge_agreement(items, backend=get_backend("local"), model=ModelRef(str(start_dir)),
                                samples_per_prompt=2, votes=3, max_new_tokens=tokens)

    start_acc = sft["acc"][-1]
    print(f"\n| method | {' | '.join(f'round {i}' for i in range(rounds + 1))} | status | seconds by stage |")
    print("|---|" + "---|" * (rounds + 3))
    print(f"| sft start | {sft['acc'][0]} → {start_acc} | | {sft['status']} | "
          f"{', '.join(f'{k} {v:.0f}' for k, v in sft['stages'].items())} |")
    best = start_acc or 0.0
    for method in args.methods.split(","):
        r = results[method]
        accs = [start_acc] + r["acc"][1:]
        best = max(best, *(a for a in accs[1:] if a is not None), 0.0)
        print(f"| {method} | {' | '.join('-' if a is None else f'{a:.3f}' for a in accs)} | {r['status']} | "
              f"{', '.join(f'{k} {v:.0f}' for k, v in r['stages'].items())} |")
        if r["error"]:
            print(f"|  error | {r['error'].splitlines()[0][:200]} |")
        skipped = [f"round {i + 1}: {m}" for i, m in enumerate(r["skipped"]) if m]
        if skipped:
            print(f"|  no training | {'; '.join(skipped)} |")
    print("\njudge agreement of the SFT start:", json.dumps({k: agreement[k] for k in ("rubric", "refiner", "unparsed")}))
    print(f"ratio={best / start_acc if start_acc else float('nan'):.3f}")


if __name__ == "__main__":
    main()
