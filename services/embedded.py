"""Embedded mode: a whole run in one process — SQLite file, the same task functions executed
inline (no broker), the local generation backend — with rich progress bars.

This is a thin driver: it creates the run through the same function as the API (same validation,
same messages), then drains the in-process queue, which holds exactly the task names and
arguments Celery would have carried.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shared.config import Settings, default_home, use_settings

console = Console()


def configure(db_path: Path | None = None, artifact_dir: Path | None = None) -> None:
    """Install settings for a SQLite file and inline execution in this process (the rest of the
    settings still come from the environment), and bring the database's schema up to date."""
    home = default_home() / "embedded"
    db = db_path or home / "autodidact.db"
    use_settings(Settings(database_url=f"sqlite:///{db}", execution="inline",
                          artifact_dir=artifact_dir or home / "artifacts"))
    from shared.migrate import upgrade

    upgrade()


def load_items(path: Path) -> list[dict]:
    from services.gateway.validation import parse_jsonl

    items, errors = parse_jsonl(Path(path).read_text(encoding="utf-8"))
    if errors:
        raise ValueError(f"{path}: " + "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5]))
    return items


def create_run(*, method: str, prompts: Path, model: str, rounds: int, config: dict,
               eval_prompts: Path | None = None, config_sets: dict[str, Path] | None = None,
               workspace: str = "local") -> int:
    """Store the prompt sets and create the run with the API's function (services/methods/runs.py);
    `config_sets` uploads files whose new prompt set ids go into a config field (e.g.
    Self-Rewarding's eft_prompt_set_ids). Raises RunInvalid (nothing stored) when the API would
    answer 422."""
    from services.methods import runs
    from shared import crud
    from shared.db import session_scope
    from shared.models import RunCreate
    from shared.queue import enqueue

    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=workspace)
        config = dict(config)
        for field, path in (config_sets or {}).items():
            config[field] = [crud.create_prompt_set(s, workspace_id=ws.id, name=Path(path).name,
                                                    items=load_items(path)).id]
        train = crud.create_prompt_set(s, workspace_id=ws.id, name=Path(prompts).name, items=load_items(prompts))
        evals = []
        if eval_prompts is not None:
            evals = [crud.create_prompt_set(s, workspace_id=ws.id, name=Path(eval_prompts).name,
                                            items=load_items(eval_prompts), split="heldout").id]
        body = RunCreate(method=method, base_model=model, prompt_set_ids=[train.id], eval_prompt_set_ids=evals,
                         rounds=rounds, config=config)
        run, rnd = runs.create_run(s, workspace_id=ws.id, body=body)
        round_id, run_id = rnd.id, run.id
    enqueue("conductor.advance", round_id)
    return run_id


def resume(run_id: int) -> int:
    """Make a run whose embedded process stopped before the run ended (Ctrl-C, a crash, a restart)
    ready to go on: the stage tasks of its open rounds that were pending or running are queued again
    (finished shards keep their results, a shard cut off mid-way starts over); `drive` then drains
    the queue. Returns how many tasks were queued. Raises LookupError for a run the database does
    not hold and ValueError for one that has ended (its status says how)."""
    from services.gateway.conductor import resend_open_tasks
    from shared import crud
    from shared.db import session_scope

    with session_scope() as s:
        run = crud.get_run(s, run_id=run_id)
        if run is None:
            raise LookupError(f"no run {run_id} in this database")
        if run.status not in ("queued", "running"):
            raise ValueError(f"run {run_id} has ended: {run.status}" + (f" ({run.error})" if run.error else ""))
    return resend_open_tasks(run_id)


def drive(run_id: int, show_progress: bool = True) -> None:
    """Drain the inline queue, drawing one progress bar per (round, stage)."""
    from shared import crud
    from shared.db import session_scope
    from shared.logs import log_context
    from shared.queue import run_inline

    bars: dict[tuple[int, str], int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, disable=not show_progress) as progress:
        def refresh(_name=None, _args=None) -> None:
            with session_scope() as s:
                for rnd in crud.rounds_of_run(s, run_id=run_id):
                    for stage, st in (rnd.stages or {}).items():
                        key = (rnd.number, stage)
                        total = st.get("shards", 1) or 1
                        done = st.get("shards_done", 0) if st.get("status") == "running" else total
                        if key not in bars:
                            bars[key] = progress.add_task(f"round {rnd.number} · {stage}", total=total)
                        progress.update(bars[key], completed=done, total=total)

        with log_context(run_id=run_id):
            run_inline(on_task=refresh)
        refresh()
