"""Evaluate one stored model version of a bench run on that run's held-out prompts, paired with the
run's start: what a version did that no round's evaluation shows by itself (a Self-Rewarding M1
made before round 1 evaluated it apart, `metrics.eval_policy`, or a version from another run).

Loads the embedded database of `bench/improvement.py` (or any embedded run), answers the run's
held-out prompts greedily with the version (the token budget of the run's evaluation), scores them
with the verifier as a round's evaluation does, and prints accuracy with its interval, the paired
change against round 1's `eval_base` (the run's start) and per instruction type, and the rates of
cut, junk and echoed answers. Nothing is stored.

    .venv/bin/python bench/eval_version.py /tmp/autodidact-bench-XXXX/bench.db --version 2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("--version", type=int, required=True, help="ModelVersion id (a run's M1: its round:0:policy)")
    ap.add_argument("--run", type=int, default=1, help="run whose held-out prompts and start are used")
    ap.add_argument("--limit", type=int, default=0, help="only the first N held-out prompts (0: all)")
    ap.add_argument("--out", type=Path, help="write the evaluation (with its outcomes) to this JSON file")
    args = ap.parse_args()

    from services import embedded
    from services.generation.registry import get_backend
    from services.generation.versions import version_ref
    from services.judging.evaluation import by_instruction, compare
    from services.judging.heldout import evaluate_model
    from shared import crud
    from shared.db import session_scope
    from shared.models import ModelVersion, Run

    embedded.configure(args.db, args.db.parent / "artifacts")
    with session_scope() as s:
        run = s.get(Run, args.run)
        if run is None or not run.eval_prompt_set_ids:
            raise SystemExit(f"run {args.run} has no held-out prompt sets")
        version = s.get(ModelVersion, args.version)
        if version is None:
            raise SystemExit(f"no model version {args.version}")
        ref, key = version_ref(version), version.key
        prompts = crud.prompts_of_sets(s, prompt_set_ids=run.eval_prompt_set_ids)
        prompts = prompts[:args.limit] if args.limit > 0 else prompts
        ids = [p.id for p in prompts]
        items = [{"prompt": p.messages[-1]["content"], "constraints": p.constraints} for p in prompts]
        rounds = crud.rounds_of_run(s, run_id=run.id)
        start = rounds[0].metrics.get("eval_base") if rounds else None
        budget = run.config.get("eval_max_new_tokens") or run.config.get("max_new_tokens") or 160
    ev = evaluate_model(items, backend=get_backend("local"), model=ref, max_new_tokens=int(budget))
    # evaluate_model keys its outcomes by position; a round's evaluation keys them by prompt id
    ev["outcomes"] = [[ids[o[0]], *o[1:]] for o in ev["outcomes"]]
    lo, hi = ev["ci95"]["prompt_strict_acc"]
    print(f"{key}: prompt strict {ev['prompt_strict_acc']:.3f} [{lo:.3f}, {hi:.3f}], instruction strict "
          f"{ev['instruction_strict_acc']:.3f}, prompt loose {ev['prompt_loose_acc']:.3f}; cut at the limit "
          f"{ev['limit_rate']:.0%}, junk {ev['junk_rate']:.0%}, echo {ev['echo_rate']:.0%}, "
          f"{ev['mean_response_words']:.0f} words ({len(items)} prompts, {budget} tokens)")
    if start:
        d = compare(start, ev)["prompt_strict_acc"]
        print(f"vs the run's start: {100 * d['difference']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] "
              f"({d['gained']} gained, {d['lost']} lost of {d['n']})")
        print("by instruction type: " + ", ".join(f"{r['instruction']} {r['change']:+d}"
                                                 for r in by_instruction(start, ev) if r["change"]))
    if args.out:
        args.out.write_text(json.dumps(ev, indent=1, default=str))


if __name__ == "__main__":
    main()
