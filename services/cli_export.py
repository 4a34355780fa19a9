"""`autodidact export prompts|pairs|model` and `autodidact import prompts`: the same conversions as
the API (services/gateway/formats.py, services/training/export.py) on the local database and
artifact store (AUTODIDACT_DATABASE_URL, or --db for an embedded SQLite file)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

export_app = typer.Typer(help="Write prompt sets, preference pairs and model versions as files people load.",
                         no_args_is_help=True)
import_app = typer.Typer(help="Read prompt sets from Parquet files or `datasets` directories.", no_args_is_help=True)
console = Console()
DB_HELP = "embedded SQLite file (default: AUTODIDACT_DATABASE_URL)"
FORMAT_HELP = "jsonl | parquet | hf (a datasets save_to_disk directory); default: from OUT's suffix, else hf"


def _configure(db: Optional[Path]) -> None:
    if db is not None:
        from services import embedded

        embedded.configure(db)


def _format(out: Path, fmt: Optional[str]) -> str:
    from services.gateway.formats import FORMATS

    fmt = fmt or {".jsonl": "jsonl", ".parquet": "parquet"}.get(out.suffix, "hf")
    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {FORMATS}", param_hint="--format")
    return fmt


def _write(records: list[dict], out: Path, fmt: str, kind: str, style: str) -> None:
    from services.gateway import formats

    if out.exists() and fmt == "hf":
        raise typer.BadParameter(f"{out} exists; give a new directory", param_hint="out")
    try:
        formats.write(records, out, fmt, kind, style)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format")
    console.print(f"wrote {len(records)} {kind} to {out} ({fmt})")


@export_app.command("prompts")
def export_prompts(set_id: int, out: Path, fmt: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
                   style: str = typer.Option("conversational", help="conversational | standard (plain text)"),
                   db: Optional[Path] = typer.Option(None, help=DB_HELP)) -> None:
    """A prompt set as JSONL (the upload format), Parquet or a datasets directory."""
    from services.gateway import formats
    from shared import crud
    from shared.db import session_scope
    from shared.models import PromptSet

    _configure(db)
    fmt = _format(out, fmt)
    with session_scope() as s:
        if s.get(PromptSet, set_id) is None:
            raise typer.BadParameter(f"no prompt set {set_id}", param_hint="set_id")
        rows = [p.model_dump(include={"messages", "reference", "constraints", "answer", "topic"})
                for p in crud.prompts_of_set(s, prompt_set_id=set_id)]
    try:
        records = formats.upload_records(rows) if fmt == "jsonl" else formats.prompt_records(rows, style)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--style")
    _write(records, out, fmt, "prompts", style)


@export_app.command("pairs")
def export_pairs(run_id: int, out: Path, round: Optional[int] = typer.Option(None, help="one round only"),
                 fmt: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
                 style: str = typer.Option("conversational", help="conversational | standard (plain text)"),
                 db: Optional[Path] = typer.Option(None, help=DB_HELP)) -> None:
    """A run's preference pairs in TRL's format (prompt, chosen, rejected, round, source, margin)."""
    from services.gateway import formats
    from shared import crud
    from shared.db import session_scope

    _configure(db)
    fmt = _format(out, fmt)
    with session_scope() as s:
        if crud.get_run(s, run_id=run_id) is None:
            raise typer.BadParameter(f"no run {run_id}", param_hint="run_id")
        pairs = crud.pairs_of_run(s, run_id=run_id, round_number=round)
    try:
        records = formats.pair_records(pairs, style)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--style")
    _write(records, out, fmt, "pairs", style)


@export_app.command("model")
def export_model(version_id: int, out_dir: Path,
                 dtype: str = typer.Option("auto", help="auto (the base's) | float32 | bfloat16 | float16"),
                 db: Optional[Path] = typer.Option(None, help=DB_HELP)) -> None:
    """A model version as a merged transformers directory with its tokenizer and a model card."""
    from services.training.export import DTYPES
    from services.training.tasks import export_version

    if dtype not in DTYPES:
        raise typer.BadParameter(f"choose one of {DTYPES}", param_hint="--dtype")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise typer.BadParameter(f"{out_dir} exists and is not empty", param_hint="out_dir")
    _configure(db)
    try:
        with console.status(f"merging version {version_id}"):
            path = export_version(version_id, out_dir, dtype)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="version_id")
    console.print(f"wrote {path} (load it with AutoModelForCausalLM.from_pretrained)")


@import_app.command("prompts")
def import_prompts(path: Path = typer.Argument(..., exists=True, help="a .parquet file or a save_to_disk directory"),
                   name: Optional[str] = typer.Option(None, help="the set's name (default: the file's)"),
                   workspace: str = typer.Option("local", help="workspace name (created if new)"),
                   split: str = typer.Option("train", help="train | heldout"),
                   maps: list[str] = typer.Option([], "--map", help="field=column, e.g. --map prompt=instruction"),
                   dataset_split: Optional[str] = typer.Option(None, help="the split of a DatasetDict directory"),
                   db: Optional[Path] = typer.Option(None, help=DB_HELP)) -> None:
    """Store a prompt set read from Parquet or a datasets directory, validated like an API upload."""
    from services.gateway import formats
    from shared import crud
    from shared.db import session_scope

    if split not in ("train", "heldout"):
        raise typer.BadParameter("choose train or heldout", param_hint="--split")
    mapping, errors = formats.parse_mapping(maps)
    if not errors:
        try:
            tab = formats.read_table(path, dataset_split)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="path")
        items, errors = formats.items_from_table(tab, mapping, where=path.name)
    if errors:
        for e in errors[:20]:
            console.print("[red]invalid:[/red] " + escape(f"{' / '.join(map(str, e['loc']))}: {e['msg']}"))
        raise typer.Exit(2)
    _configure(db)
    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=workspace)
        ps = crud.create_prompt_set(s, workspace_id=ws.id, name=name or path.stem, split=split, items=items)
        set_id = ps.id
    console.print(f"prompt set {set_id}: {len(items)} prompts from {path}")
