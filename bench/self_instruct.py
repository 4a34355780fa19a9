"""How many usable new prompts a Self-Rewarding policy writes: the self-instruction stage replayed.

Loads a model version of a bench run's embedded database (M1 is the run's `round:0:policy`), sends
it the stage's own few-shot requests built from the run's seed prompts, with the stage's sampling
settings and seeds, for rounds 1..N, batch after batch as the stage asks them (`instruct_batches`),
and prints how many prompts the stage would keep each round; over every answer it was given, how
many `parse_new_prompt` accepts with the request filter (`new_prompts_like_seeds`, the default) and
without it, and how many remain after deduplication against the seeds. Nothing is stored.

    .venv/bin/python bench/self_instruct.py /tmp/autodidact-bench-XXXX/bench.db --version 2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db", type=Path)
    ap.add_argument("--version", type=int, required=True, help="ModelVersion id (M1: the run's round 0 policy)")
    ap.add_argument("--run", type=int, default=1, help="run id whose config and seed prompts are used")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="write every answer with its parse to this JSON file")
    args = ap.parse_args()

    from services import embedded
    from services.generation.registry import backend
    from services.generation.versions import version_ref
    from services.methods import parse_stored_config
    from services.methods.self_instruct import collect_new_prompts
    from services.methods.self_reward import SelfRewardConfig, dedupe, parse_new_prompt, task_openers
    from shared.db import session_scope
    from shared.models import ModelVersion, Run
    from shared.round_data import RoundData
    from shared import crud

    embedded.configure(args.db, args.db.parent / "artifacts")
    with session_scope() as s:
        run = s.get(Run, args.run)
        cfg, errors = parse_stored_config(SelfRewardConfig, run.config)
        if errors:
            raise SystemExit(f"run {args.run} has no Self-Rewarding config: {errors}")
        first = crud.rounds_of_run(s, run_id=run.id)[0]
        seeds = [p["messages"][-1]["content"] for p in RoundData(s, round_id=first.id).run_prompts()]
        ref = version_ref(s.get(ModelVersion, args.version))
    openers = task_openers(seeds)
    rows = []
    for rnd in range(1, args.rounds + 1):
        def generate(requests, params, rnd=rnd):
            texts = [out[0].text for out in backend().generate(requests, ref, params)]
            rows.extend({"round": rnd, "answer": t, "filtered": parse_new_prompt(t, openers),
                         "unfiltered": parse_new_prompt(t)} for t in texts)
            return texts

        _, stats = collect_new_prompts(generate, cfg, seeds, [], rnd, cfg.new_prompts_per_round)
        print(f"round {rnd}: {json.dumps(stats)}", flush=True)
    for key in ("unfiltered", "filtered"):
        usable = [r[key] for r in rows if r[key]]
        print(f"{key}: {len(usable)} of {len(rows)} answers accepted, "
              f"{len(dedupe(usable, seeds, cfg.dedupe_threshold))} after deduplication against the seeds")
    print("accepted with the filter:")
    for r in rows:
        if r["filtered"]:
            print("  " + json.dumps(r["filtered"][:160]))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
