"""Replay Self-Rewarding's pair selection on a finished run's own candidates and scores.

Which pairs would other settings of `length_control`, `chosen_must_end` and `length_balance` have
made from the very candidates a run generated and the scores its judge gave? Nothing is generated or
trained: the script reads the run's database (a bench's `bench.db`, or the embedded default) and
calls the recipe's own `round_pairs` with each setting, so what it prints is what those settings
would have sent to DPO. It cannot say what the model would then have learned.

    .venv/bin/python bench/pair_replay.py /tmp/autodidact-bench-XXXX/bench.db
    .venv/bin/python bench/pair_replay.py DB --run 1 --settings '[{"length_balance": 0.5}, {"chosen_must_end": false}]'
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_SETTINGS = [  # each names all three, since a setting is merged into the run's own config
    {"length_control": False, "chosen_must_end": False, "length_balance": 1.0},
    {"length_control": True, "chosen_must_end": False, "length_balance": 1.0},
    {"length_control": True, "chosen_must_end": True, "length_balance": 1.0},
    {"length_control": True, "chosen_must_end": True, "length_balance": 0.6},
    {"length_control": True, "chosen_must_end": True, "length_balance": 0.5},
]

def replay(db: Path, run_id: int | None, settings: list[dict]) -> list[dict]:
    """Per round of the run (the latest Self-Rewarding run when `run_id` is None) and per setting:
    the pair counts round_pairs reports, and how many chosen answers ran into the token limit."""
    from services import embedded
    from services.judging.degeneration import hit_limit
    from services.methods.self_reward import SelfRewardConfig, round_pairs
    from shared import crud
    from shared.db import session_scope
    from shared.models import Run
    from shared.round_data import RoundData
    from sqlmodel import func, select

    embedded.configure(db, db.parent / "artifacts")
    rows = []
    with session_scope() as s:
        if run_id is None:
            run_id = s.exec(select(func.max(Run.id)).where(Run.method == "self_reward")).one()
        run = crud.get_run(s, run_id=run_id) if run_id is not None else None
        if run is None or run.method != "self_reward":
            raise SystemExit(f"no Self-Rewarding run {run_id if run_id is not None else ''} in {db}")
        base = {k: v for k, v in run.config.items() if k in SelfRewardConfig.__dataclass_fields__}
        for rnd in crud.rounds_of_run(s, run_id=run_id):
            data = RoundData(s, round_id=rnd.id)
            samples = data.samples("candidate")
            if not samples:
                continue
            cut = {(x["prompt_id"], x["text"]) for x in samples if hit_limit(x["finish_reason"])}
            for setting in settings:
                cfg = SelfRewardConfig(**{**base, **setting})
                pairs, counts = round_pairs(data, cfg)
                rows.append({"round": rnd.number, "setting": setting, "chosen_cut": sum((p["prompt_id"], p["chosen"]) in cut for p in pairs),
                             **{k: counts.get(k) for k in ("pairs", "ties_dropped", "dropped_for_length",
                                                           "rejected_longer", "chosen_words_mean",
                                                           "rejected_words_mean", "cut_best_passed_over")}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db", type=Path)
    ap.add_argument("--run", type=int, default=None, help="run id (default: the latest Self-Rewarding run)")
    ap.add_argument("--settings", type=json.loads, default=DEFAULT_SETTINGS,
                    help="JSON list of objects, each merged into the run's own config")
    args = ap.parse_args()
    rows = replay(args.db.resolve(), args.run, args.settings)
    print("| round | setting | pairs | ties | dropped for length | rejected longer | words chosen / rejected | "
          "chosen cut at limit | cut best passed over |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        share = f"{r['rejected_longer']} ({r['rejected_longer'] / r['pairs']:.0%})" if r["pairs"] else "-"
        print(f"| {r['round']} | {json.dumps(r['setting'])} | {r['pairs']} | {r['ties_dropped']} | "
              f"{r['dropped_for_length'] or 0} | {share} | {r['chosen_words_mean']} / {r['rejected_words_mean']} | "
              f"{r['chosen_cut']} | {r['cut_best_passed_over']} |")


if __name__ == "__main__":
    main()
