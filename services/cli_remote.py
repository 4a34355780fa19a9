"""The `autodidact` commands that drive a gateway over HTTP (services/client.py): prompt sets
(upload JSONL or Parquet, export), runs (submit, list, show, watch live, cancel, pairs, plot, train
steps) and model versions (list, show, promote, export as a merged directory).

Every command takes `--url` and `--api-key`, falling back to AUTODIDACT_URL / AUTODIDACT_API_KEY
(through shared.config). An error answer prints the server's message and exits with status 1,
without a traceback. `runs watch` exits 0 when the run succeeded, 3 failed, 4 stopped (a
regression rule), 5 cancelled, so a script can wait on a run with it.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from services.client import Client
    from services.gateway.schemas import RunDetail

prompt_sets_app = typer.Typer(help="Prompt sets on the gateway (--url / AUTODIDACT_URL).", no_args_is_help=True)
runs_app = typer.Typer(help="Runs on the gateway: list, show, watch, cancel, pairs, plot.", no_args_is_help=True)
models_app = typer.Typer(help="Model versions on the gateway: list, show, promote, export, base models.",
                         no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

Url = Annotated[Optional[str], typer.Option("--url", help="gateway base URL (default: AUTODIDACT_URL, "
                                                          "else http://127.0.0.1:8000)")]
Key = Annotated[Optional[str], typer.Option("--api-key", help="API key (default: AUTODIDACT_API_KEY)")]
Limit = Annotated[int, typer.Option(help="show at most this many, newest first")]
EXIT = {"succeeded": 0, "failed": 3, "stopped": 4, "cancelled": 5}
COLOR = {"succeeded": "green", "failed": "red", "stopped": "yellow", "cancelled": "magenta", "running": "cyan",
         "queued": "dim", "skipped": "dim"}
MARK = {"succeeded": "✓", "failed": "✗", "skipped": "–", "running": "●", "cancelled": "■"}
FORMAT_HELP = "jsonl | parquet | hf (a datasets save_to_disk directory); default: parquet for a .parquet OUT, else jsonl"
STYLE_HELP = "conversational (chat messages) | standard (plain text; refuses chat prompts)"
Style = Annotated[str, typer.Option(help=STYLE_HELP)]


def register(app: typer.Typer) -> None:
    app.add_typer(prompt_sets_app, name="prompt-sets")
    app.add_typer(runs_app, name="runs")
    app.add_typer(models_app, name="models")


@contextmanager
def connect(url: Optional[str], api_key: Optional[str]) -> Iterator["Client"]:
    """A client of the gateway; an ApiError inside becomes the server's message and exit status 1."""
    from services.client import ApiError, Client

    try:
        with Client(url, api_key) as client:
            yield client
    except ApiError as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(1)


def _when(value: Optional[datetime]) -> str:
    return f"{value.astimezone():%Y-%m-%d %H:%M}" if value else "-"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    return table


def _styled(status: str) -> str:
    return f"[{COLOR.get(status, 'white')}]{status}[/]"


def _format(out: Optional[Path], fmt: Optional[str]) -> str:
    fmt = fmt or ("parquet" if out is not None and out.suffix == ".parquet" else "jsonl")
    if fmt not in ("jsonl", "parquet", "hf"):
        raise typer.BadParameter("choose jsonl, parquet or hf", param_hint="--format")
    return fmt


def _out(out: Optional[Path], stem: str, fmt: str) -> Path:
    """OUT, or the stem with the format's suffix (hf: a directory); an hf OUT must be new or empty."""
    out = out or Path(stem + {"jsonl": ".jsonl", "parquet": ".parquet", "hf": ""}[fmt])
    if fmt == "hf" and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise typer.BadParameter(f"{out} exists; give a new directory", param_hint="out")
    return out


def _wrote(got, kind: str, fmt: str) -> str:
    if fmt == "jsonl":
        return f"wrote {got.lines} {kind} to {got.path}"
    what = "a datasets directory: datasets.load_from_disk" if fmt == "hf" else "Parquet"
    return f"wrote {got.path} ({what}, {got.size:,} bytes received)"


def _maps(values: list[str]) -> dict[str, str]:
    """--map field=column (repeatable, or comma-separated) as {field: column}."""
    mapping = {}
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            field, sep, column = part.partition("=")
            if not (sep and field.strip() and column.strip()):
                raise typer.BadParameter(f"{part!r}: write field=column, e.g. prompt=instruction", param_hint="--map")
            mapping[field.strip()] = column.strip()
    return mapping


# ---------------------------------------------------------------- prompt sets
@prompt_sets_app.command("upload")
def prompt_sets_upload(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False,
                                                             help="JSONL (one item a line) or Parquet")],
                       name: Optional[str] = typer.Option(None, help="default: the file's name"),
                       description: Optional[str] = None,
                       split: Optional[str] = typer.Option(None, help="train (default) | heldout"),
                       maps: list[str] = typer.Option([], "--map", help="Parquet: field=column, e.g. "
                                                                        "--map prompt=instruction (repeatable)"),
                       url: Url = None, api_key: Key = None) -> None:
    """Upload a prompt set from JSONL or Parquet (streamed; a set with any bad line or row is refused whole)."""
    mapping = _maps(maps)
    with connect(url, api_key) as api:
        ps = api.upload_prompt_set(file, name=name, description=description, split=split, map=mapping or None)
    console.print(f"prompt set {ps.id} {ps.name!r}: {ps.size} prompts ({ps.split})")


@prompt_sets_app.command("list")
def prompt_sets_list(limit: Limit = 20, url: Url = None, api_key: Key = None) -> None:
    """The workspace's prompt sets, newest first."""
    table = _table("prompt sets", "id", "name", "split", "prompts", "created")
    with connect(url, api_key) as api:
        for ps in islice(api.prompt_sets(), limit):
            table.add_row(str(ps.id), escape(ps.name), ps.split, str(ps.size), _when(ps.created_at))
    console.print(table)


@prompt_sets_app.command("show")
def prompt_sets_show(set_id: int, prompts: int = typer.Option(5, help="how many of its prompts to show"),
                     url: Url = None, api_key: Key = None) -> None:
    """A prompt set and its first prompts."""
    with connect(url, api_key) as api:
        ps = api.prompt_set(set_id)
        rows = list(islice(api.prompts(set_id, page_size=max(1, min(prompts, 1000))), prompts))
    console.print(f"prompt set {ps.id} {escape(repr(ps.name))} · {ps.split} · {ps.size} prompts · "
                  f"created {_when(ps.created_at)}" + (f"\n{escape(ps.description)}" if ps.description else ""))
    table = _table("", "#", "prompt", "reference", "constraints")
    for p in rows:
        table.add_row(str(p.position), escape(p.messages[-1]["content"][:120]), escape((p.reference or "")[:80]),
                      ", ".join(c["id"] for c in p.constraints or []))
    if rows:
        console.print(table)


@prompt_sets_app.command("export")
def prompt_sets_export(set_id: int,
                       out_arg: Optional[Path] = typer.Argument(None, metavar="OUT",
                                                                help="default: prompt-set-ID.jsonl / .parquet / dir"),
                       out: Optional[Path] = typer.Option(None, "--out", help="the same as OUT"),
                       fmt: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
                       style: Style = "conversational", url: Url = None, api_key: Key = None) -> None:
    """Download a prompt set: JSONL in the upload format, Parquet, or a datasets directory."""
    out = out_arg or out
    fmt = _format(out, fmt)
    out = _out(out, f"prompt-set-{set_id}", fmt)
    with connect(url, api_key) as api:
        got = api.download_prompt_set(set_id, out, format=fmt, style=style)
    console.print(_wrote(got, "prompts", fmt))


# ---------------------------------------------------------------- runs
def submit_run(*, method: str, model: str, rounds: int, config: dict, prompts: Optional[Path],
               eval_prompts: Optional[Path], prompt_set_ids: list[int], eval_set_ids: list[int],
               watch: bool, url: Optional[str], api_key: Optional[str], interval: float = 2.0) -> int:
    """`autodidact run` without --embedded: upload the JSONL files given (as prompt sets), submit
    the run, and optionally watch it. Returns the exit status."""
    if prompts is None and not prompt_set_ids:
        raise typer.BadParameter("give --prompts FILE (uploaded first) or --prompt-set ID", param_hint="--prompts")
    with connect(url, api_key) as api:
        train, held = list(prompt_set_ids), list(eval_set_ids)
        for path, ids, split in ((prompts, train, "train"), (eval_prompts, held, "heldout")):
            if path is not None:
                ps = api.upload_prompt_set(path, split=split)
                console.print(f"uploaded {path} as prompt set {ps.id} ({ps.size} prompts, {ps.split})")
                ids.append(ps.id)
        run = api.create_run(method, model, train, eval_prompt_set_ids=held, rounds=rounds, config=config)
        console.print(f"submitted run {run.id} ({run.method}, {run.rounds} round(s)); "
                      f"follow it with: autodidact runs watch {run.id}")
        return watch_run(api, run.id, interval) if watch else 0


@runs_app.command("list")
def runs_list(limit: Limit = 20, url: Url = None, api_key: Key = None) -> None:
    """The workspace's runs, newest first."""
    table = _table("runs", "id", "method", "base model", "status", "rounds", "created", "finished")
    with connect(url, api_key) as api:
        for r in islice(api.runs(), limit):
            table.add_row(str(r.id), r.method, escape(r.base_model), _styled(r.status),
                          f"{r.rounds}{'+' if r.continuous else ''}", _when(r.created_at), _when(r.finished_at))
    console.print(table)


@runs_app.command("show")
def runs_show(run_id: int, url: Url = None, api_key: Key = None) -> None:
    """A run: status, and per round its stages, training and held-out metrics."""
    with connect(url, api_key) as api:
        run = api.run(run_id)
    console.print(run_view(run))
    console.print(f"prompt sets {run.prompt_set_ids} · held-out {run.eval_prompt_set_ids or '-'} · "
                  f"config {escape(json.dumps(run.config))}", soft_wrap=True)


@runs_app.command("watch")
def runs_watch(run_id: int, interval: float = typer.Option(2.0, min=0.05, help="seconds between polls"),
               url: Url = None, api_key: Key = None) -> None:
    """Follow a run live until it ends; exit 0 succeeded, 3 failed, 4 stopped, 5 cancelled."""
    with connect(url, api_key) as api:
        code = watch_run(api, run_id, interval)
    raise typer.Exit(code)


@runs_app.command("cancel")
def runs_cancel(run_id: int, url: Url = None, api_key: Key = None) -> None:
    """Cancel a run (a member key: only runs it submitted)."""
    with connect(url, api_key) as api:
        run = api.cancel_run(run_id)
    console.print(f"run {run.id}: {_styled(run.status)}")


@runs_app.command("add-prompt-sets")
def runs_add_prompt_sets(run_id: int, set_ids: list[int], url: Url = None, api_key: Key = None) -> None:
    """Add prompt sets to a running run; they join from its next round."""
    with connect(url, api_key) as api:
        run = api.add_prompt_sets(run_id, set_ids)
    console.print(f"run {run.id} trains on prompt sets {run.prompt_set_ids}")


@runs_app.command("pairs")
def runs_pairs(run_id: int, out: Path = typer.Option(None, help="default: run-ID-pairs.jsonl / .parquet / dir"),
               round_number: Optional[int] = typer.Option(None, "--round", help="only this round"),
               fmt: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
               style: Style = "conversational", url: Url = None, api_key: Key = None) -> None:
    """Download a run's preference pairs (TRL's prompt / chosen / rejected, plus round, source,
    margin) as JSONL, Parquet, or a datasets directory for DPOTrainer."""
    fmt = _format(out, fmt)
    out = _out(out, f"run-{run_id}-pairs", fmt)
    with connect(url, api_key) as api:
        got = api.download_pairs(run_id, out, round_number=round_number, format=fmt, style=style)
    console.print(_wrote(got, "pairs", fmt))


@runs_app.command("plot")
def runs_plot(run_id: int, out: Path = typer.Option(None, help="PNG file (default: run-ID.png)"),
              url: Url = None, api_key: Key = None) -> None:
    """Download the plot of held-out accuracy and response length per round."""
    out = out or Path(f"run-{run_id}.png")
    with connect(url, api_key) as api:
        api.download_plot(run_id, out)
    console.print(f"wrote {out}")


@runs_app.command("train-steps")
def runs_train_steps(run_id: int, round_number: int, last: int = typer.Option(10, help="steps shown per job"),
                     url: Url = None, api_key: Key = None) -> None:
    """Per-step trainer metrics of one round (the last steps of each training job)."""
    with connect(url, api_key) as api:
        steps = api.train_steps(run_id, round_number)
    for job, rows in steps.series.items():
        cols = sorted({k for row in rows for k in row}, key=lambda k: (k != "step", k))
        table = _table("", *cols)
        for row in rows[-last:]:
            table.add_row(*(_num(row.get(c)) for c in cols))
        console.print(f"round {round_number} · {job} ({len(rows)} steps)", table)
    if not steps.series:
        console.print(f"round {round_number} has no training steps yet")


# ---------------------------------------------------------------- models
@models_app.command("list")
def models_list(limit: Limit = 20, url: Url = None, api_key: Key = None) -> None:
    """Model versions, newest first (base models, one adapter per round and role)."""
    table = _table("model versions", "id", "key", "kind", "run", "round", "promoted", "held-out strict acc", "created")
    with connect(url, api_key) as api:
        for m in islice(api.models(), limit):
            table.add_row(str(m.id), escape(m.key), m.kind, str(m.run_id or "-"), str(m.round_number or "-"),
                          "[green]yes[/]" if m.promoted else "", _acc((m.metrics or {}).get("eval") or {}),
                          _when(m.created_at))
    console.print(table)


@models_app.command("show")
def models_show(version_id: int, url: Url = None, api_key: Key = None) -> None:
    """One model version with its metrics (JSON)."""
    with connect(url, api_key) as api:
        m = api.model(version_id)
    console.print_json(m.model_dump_json())


@models_app.command("promote")
def models_promote(version_id: int, url: Url = None, api_key: Key = None) -> None:
    """Mark a version as the one to serve (admin keys); other versions of its run lose the mark."""
    with connect(url, api_key) as api:
        m = api.promote_model(version_id)
    console.print(f"promoted model version {m.id} ({escape(m.key)})")


@models_app.command("export")
def models_export(version_id: int, out_dir: Path = typer.Argument(..., help="a new (or empty) directory"),
                  dtype: str = typer.Option("auto", help="auto (the base's) | float32 | bfloat16 | float16"),
                  timeout: float = typer.Option(3600, min=1, help="seconds to wait for the merge"),
                  interval: float = typer.Option(2.0, min=0.05, help="seconds between polls"),
                  url: Url = None, api_key: Key = None) -> None:
    """Merge a version into its base on the gateway's training queue, wait, download and unpack it:
    OUT_DIR is then a transformers directory (AutoModelForCausalLM.from_pretrained) with a model card."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise typer.BadParameter(f"{out_dir} exists and is not empty", param_hint="out_dir")
    start = time.monotonic()
    with connect(url, api_key) as api, console.status(f"exporting model version {version_id}") as status:
        def show(st) -> None:
            if st.status == "ready":
                status.update(f"downloading model version {version_id} ({dtype}, {(st.archive_bytes or 0) / 2**20:.1f} MiB)")
            else:
                status.update(f"model version {version_id} ({dtype}): {st.status}, "
                              f"{_elapsed(time.monotonic() - start)} (merging on the training queue)")

        try:
            path = api.export_model_and_download(version_id, out_dir, dtype=dtype, timeout=timeout,
                                                 interval=interval, on_status=show)
        except (TimeoutError, ValueError) as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1)
    console.print(f"wrote {path} (load it with AutoModelForCausalLM.from_pretrained)")


@models_app.command("base")
def models_base(url: Url = None, api_key: Key = None) -> None:
    """Accepted values of a run's base model on this gateway."""
    with connect(url, api_key) as api:
        for name in api.base_models():
            console.print(escape(name))


# ---------------------------------------------------------------- the live view
def watch_run(api: "Client", run_id: int, interval: float, *, out: Optional[Console] = None) -> int:
    """Redraw the run every `interval` s until it ends; the exit status of its outcome. A gateway
    that stops answering for a while is shown and waited for; any other error ends the watch."""
    from services.client import FINISHED, ApiError

    out = out or console
    run, note, said = api.run(run_id), "", None
    try:
        with Live(run_view(run), console=out, refresh_per_second=4) as live:
            while run.status not in FINISHED:
                if not out.is_terminal and (line := progress_line(run)) != said:
                    out.print(line, highlight=False)  # logs and pipes get one line per change
                    said = line
                time.sleep(interval)
                try:
                    run, note = api.run(run_id), ""
                except ApiError as exc:
                    if not exc.transient:
                        raise
                    note = f"gateway not answering, retrying: {exc.message}"
                live.update(run_view(run, note))
    except KeyboardInterrupt:
        err_console.print(f"stopped watching; run {run_id} goes on (autodidact runs cancel {run_id} stops it)")
        return 130
    if not out.is_terminal:
        out.line()  # Live ends its last render without a newline off a terminal
    out.print(f"run {run.id} {_styled(run.status)}" + (f": {escape(run.error)}" if run.error else ""))
    return EXIT.get(run.status, 1)


def progress_line(run: "RunDetail") -> str:
    """One line: the run's status and where its newest round stands."""
    line = f"run {run.id} {run.status}"
    if run.round_details:
        rnd = run.round_details[-1]
        line += f" · round {rnd.number} {rnd.status}"
        if rnd.stages:
            name, st = list(rnd.stages.items())[-1]
            line += f" · {name} {st.get('status')} {st.get('shards_done', 0)}/{st.get('shards', 0)}"
    return line


def run_view(run: "RunDetail", note: str = "") -> Group:
    """The run as a table: per round its status, stages with progress, pairs, training loss,
    held-out accuracy with its 95 % interval, and whether the round gate adopted it."""
    from shared.models import START_ROWS

    end = run.finished_at or datetime.now(timezone.utc)
    total = run.stopping.get("max_rounds", "∞") if run.continuous else run.rounds
    title = (f"run {run.id} · {run.method} · {escape(run.base_model)} · {_styled(run.status)} · "
             f"round {len(run.round_details)}/{total} · {_elapsed((end - run.created_at).total_seconds())}")
    table = Table(title=title)
    for col, wrap in (("round", False), ("status", False), ("stages", False), ("pairs", False), ("loss", False),
                      ("held-out strict acc [95% CI]", True), ("gate", True)):
        table.add_column(col, no_wrap=not wrap)
    rounds = run.round_details
    for label, key in START_ROWS:
        if rounds and rounds[0].metrics.get(key):
            table.add_row(label, "", "", "", "", _acc(rounds[0].metrics[key]), "")
    for rnd in rounds:
        train, gate = rnd.metrics.get("train") or {}, rnd.metrics.get("gate")
        adopted = "" if gate is None else ("adopted" if gate.get("adopted") else "not adopted: " + "; ".join(gate.get("reasons", [])))
        table.add_row(str(rnd.number), _styled(rnd.status), _stages(rnd.stages), str(rnd.metrics.get("pairs", "")),
                      _num(train.get("loss")), _acc(rnd.metrics.get("eval") or {}), escape(adopted[:80]))
    parts = [table]
    if run.error:
        parts.append(Text(f"error: {run.error}", style="red"))
    if note:
        parts.append(Text(note, style="yellow"))
    return Group(*parts)


def _stages(stages: dict) -> Group:
    """One line per stage started (✓ done, ● running, ✗ failed, – skipped) with its seconds; under
    a running stage, a bar of its shards done."""
    lines = []
    for name, st in stages.items():
        status = st.get("status", "")
        secs = f" {st['seconds']:.0f}s" if isinstance(st.get("seconds"), (int, float)) else ""
        lines.append(Text(f"{MARK.get(status, '·')} {name}{secs}", style=COLOR.get(status, "")))
        if status == "running" and st.get("shards"):
            done = st.get("shards_done", 0)
            lines.append(Table.grid(padding=(0, 1)))
            lines[-1].add_row(ProgressBar(total=st["shards"], completed=done, width=12), f"{done}/{st['shards']}")
    return Group(*lines)


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(max(seconds, 0)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))


def _acc(ev: dict, key: str = "prompt_strict_acc") -> str:
    """0.412 [0.335, 0.490] n=160"""
    if ev.get(key) is None:
        return ""
    low, high = (ev.get("ci95") or {}).get(key) or (None, None)
    return f"{ev[key]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "") + f" n={ev.get('n')}"
