"""Embedded mode: a whole run in one process — SQLite file, the same task functions executed
inline (no broker), the local generation backend — with rich progress bars.

This is a thin driver: it creates the same rows the API would, then drains the in-process queue,
which holds exactly the task names and arguments Celery would have carried.
"""
from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from shared.config import default_home, get_settings

console = Console()


def configure(db_path: Path | None = None, artifact_dir: Path | None = None) -> None:
    """Point the settings at a SQLite file and inline execution (before any engine is built)."""
    home = default_home() / "embedded"
    db = db_path or home / "autodidact.db"
    os.environ["AUTODIDACT_DATABASE_URL"] = f"sqlite:///{db}"
    os.environ["AUTODIDACT_EXECUTION"] = "inline"
    os.environ["AUTODIDACT_ARTIFACT_DIR"] = str(artifact_dir or home / "artifacts")
    get_settings.cache_clear()
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
    """Store the prompt sets and the run as the API would; `config_sets` uploads files whose new
    prompt set ids go into a config field (e.g. Self-Rewarding's eft_prompt_set_ids)."""
    from services.gateway.conductor import start_run
    from services.methods import get_recipe, parse_config
    from services.methods.base import config_json
    from shared import crud
    from shared.db import session_scope
    from shared.models import Run
    from shared.queue import enqueue

    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=workspace)
        config = dict(config)
        for field, path in (config_sets or {}).items():
            config[field] = [crud.create_prompt_set(s, workspace_id=ws.id, name=Path(path).name,
                                                    items=load_items(path)).id]
        cfg, errors = parse_config(get_recipe(method).config_cls, config)
        if errors:
            raise ValueError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors))
        train = crud.create_prompt_set(s, workspace_id=ws.id, name=Path(prompts).name, items=load_items(prompts))
        evals = []
        if eval_prompts is not None:
            evals = [crud.create_prompt_set(s, workspace_id=ws.id, name=Path(eval_prompts).name,
                                            items=load_items(eval_prompts), split="heldout").id]
        run = Run(workspace_id=ws.id, method=method, base_model=model, prompt_set_ids=[train.id],
                  eval_prompt_set_ids=evals, config=config_json(cfg),
                  rounds=rounds)
        s.add(run)
        s.flush()
        rnd = start_run(s, run)
        round_id, run_id = rnd.id, run.id
    enqueue("conductor.advance", round_id)
    return run_id


def drive(run_id: int, show_progress: bool = True) -> None:
    """Drain the inline queue, drawing one progress bar per (round, stage)."""
    from shared import crud
    from shared.db import session_scope
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

        run_inline(on_task=refresh)
        refresh()
