"""Where a bench run's minutes went: wall minutes per stage, per round, per method.

Reads the stage records the conductor keeps on each round (`Round.stages`: status and seconds per
stage, from the first shard's start to the last shard's end) from a bench run's embedded database
and prints one table per method: a row per round, a column per stage that ran in any round, the
round's total, and each stage's share of the method's total. This is what "the bench takes too long"
has to be cut from.

    .venv/bin/python bench/stage_times.py /tmp/autodidact-bench-XXXX/bench.db
"""
from __future__ import annotations

import argparse
from pathlib import Path


def stage_seconds(db: Path) -> list[dict]:
    """[{"run": id, "method": str, "round": n, "stages": {stage: seconds}}] in run and round order;
    stages that were skipped or never started are left out."""
    from services import embedded
    from shared import crud
    from shared.db import session_scope
    from shared.models import Run
    from sqlmodel import select

    embedded.configure(db, db.parent / "artifacts")
    rows = []
    with session_scope() as s:
        for run in s.exec(select(Run).order_by(Run.id)).all():
            for rnd in crud.rounds_of_run(s, run_id=run.id):
                # only a stage that finished has seconds (a skipped one records none)
                took = {name: float(st["seconds"]) for name, st in (rnd.stages or {}).items()
                        if st.get("seconds") is not None}
                rows.append({"run": run.id, "method": run.method, "round": rnd.number, "stages": took})
    return rows


def table(rows: list[dict]) -> str:
    """Markdown tables, one per run: minutes per stage and round, the round's total, and a last row
    with each stage's share of the run's total."""
    out = []
    for run_id in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run_id]
        names = list(dict.fromkeys(name for r in mine for name in r["stages"]))
        total = sum(sum(r["stages"].values()) for r in mine)
        if not names:
            out += [f"{mine[0]['method']} (run {run_id}): no stage has finished", ""]
            continue
        out.append(f"{mine[0]['method']} (run {run_id}): {total / 60:.0f} min in stages")
        out.append("| round | " + " | ".join(names) + " | total |")
        out.append("|---" * (len(names) + 2) + "|")
        for r in mine:
            cells = [f"{r['stages'][n] / 60:.1f}" if n in r["stages"] else "" for n in names]
            out.append(f"| {r['round']} | " + " | ".join(cells) + f" | {sum(r['stages'].values()) / 60:.1f} |")
        shares = [sum(r["stages"].get(n, 0.0) for r in mine) / total if total else 0.0 for n in names]
        out.append("| share | " + " | ".join(f"{x:.0%}" for x in shares) + " | 100% |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", type=Path)
    print(table(stage_seconds(ap.parse_args().db)))


if __name__ == "__main__":
    main()
