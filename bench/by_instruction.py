"""Where a gain or a loss came from: held-out strict pass rate per instruction type, per method.

Reads the greedy held-out answers a bench run stored (Sample rows with role `eval` and, in round 1,
`eval_base`) from its embedded database, scores them again with the verifier (the same IFEval
checkers as the rounds), and prints one row per instruction type: the start's pass rate and each
method's rate after its last evaluated round, with the change in prompts. Works on databases
written before evaluations stored per-instruction counts.

    .venv/bin/python bench/by_instruction.py /tmp/autodidact-bench-XXXX/bench.db
"""
from __future__ import annotations

import argparse
from pathlib import Path


def per_method(db: Path) -> tuple[dict, dict]:
    """({method: per_instruction of its last evaluated round}, per_instruction of the start)."""
    from services import embedded
    from services.judging.evaluation import aggregate
    from shared import crud
    from shared.db import session_scope
    from sqlmodel import select

    from shared.models import Run

    embedded.configure(db, db.parent / "artifacts")
    start, last = None, {}
    with session_scope() as s:
        for run in s.exec(select(Run).order_by(Run.id)).all():
            rounds = crud.rounds_of_run(s, run_id=run.id)
            for role, chosen in (("eval_base", rounds[:1]), ("eval", rounds)):
                for rnd in chosen:
                    samples = crud.samples_of_round(s, round_id=rnd.id, role=role)
                    if not samples:
                        continue
                    prompts = crud.prompts_by_id(s, ids=sorted({x.prompt_id for x in samples}))
                    items = [{"response": x.text, "constraints": prompts[x.prompt_id].constraints,
                              "prompt": prompts[x.prompt_id].messages[-1]["content"], "prompt_id": x.prompt_id}
                             for x in samples]
                    counts = aggregate(items)["per_instruction"]
                    if role == "eval_base":
                        start = start or counts
                    else:  # rounds come in order: the last evaluated one stays
                        last[run.method] = (f"{run.method} r{rnd.number}", counts)
    return dict(last.values()), start or {}


def table(final: dict, start: dict) -> str:
    names = list(final)
    lines = ["| instruction type | n | start | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for iid in sorted(set(start) | {k for c in final.values() for k in c}):
        s = start.get(iid) or [0, 0, 0]
        cells = []
        for name in names:
            a = final[name].get(iid) or [0, 0, 0]
            cells.append(f"{a[0] / a[2]:.2f} ({a[0] - s[0]:+d})" if a[2] else "-")
        lines.append(f"| {iid} | {s[2]} | {s[0] / s[2]:.2f} | " + " | ".join(cells) + " |" if s[2] else
                     f"| {iid} | 0 | - | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db", type=Path)
    args = ap.parse_args()
    print(table(*per_method(args.db)))


if __name__ == "__main__":
    main()
