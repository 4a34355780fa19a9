"""The `autodidact` command: API keys, database, workers, gateway, embedded runs and the demo."""
from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from services import cli_remote
from services.cli_export import export_app, import_app

app = typer.Typer(help="Autodidact: self-improvement loops for language models.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(export_app, name="export")
app.add_typer(import_app, name="import")
cli_remote.register(app)  # prompt-sets, runs, models: commands that drive a gateway over HTTP
console = Console()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _duration(text: str) -> timedelta:
    """'90m', '12h', '30d' -> timedelta."""
    m = re.fullmatch(r"([1-9][0-9]{0,5})([mhd])", text.strip())
    if m is None:
        raise typer.BadParameter("give a number and a unit: 90m, 12h or 30d", param_hint="--expires-in")
    unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


@keys_app.command("create")
def keys_create(workspace: str = typer.Option(..., help="workspace name (created if new)"),
                role: str = typer.Option("member", help="admin | member"),
                expires_in: Optional[str] = typer.Option(None, help="lifetime, e.g. 90m, 12h, 30d (default: none)")) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    from shared import crud
    from shared.db import session_scope
    from shared.models import utcnow

    expires = utcnow() + _duration(expires_in) if expires_in else None
    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=workspace)
        try:
            plain, _ = crud.create_api_key(s, workspace_id=ws.id, role=role, expires_at=expires)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--role")
    typer.echo(plain)


@keys_app.command("list")
def keys_list(workspace: str = typer.Option(..., help="workspace name")) -> None:
    """The workspace's keys: id, public prefix, role, state (the secret part is never stored)."""
    from shared import crud
    from shared.db import session_scope

    table = Table(title=f"API keys of {workspace}")
    for col in ("id", "prefix", "role", "state", "created", "expires"):
        table.add_column(col)
    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=workspace)
        for k in crud.list_api_keys(s, workspace_id=ws.id):
            table.add_row(str(k.id), k.prefix, k.role, crud.key_state(k), f"{k.created_at:%Y-%m-%d %H:%M}",
                          f"{k.expires_at:%Y-%m-%d %H:%M}" if k.expires_at else "never")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int, workspace: str = typer.Option(..., help="workspace name")) -> None:
    """Revoke a key; its next request is refused (401)."""
    from shared import crud
    from shared.db import session_scope

    with session_scope() as s:
        ws = crud.get_or_create_workspace(s, name=workspace)
        if crud.revoke_api_key(s, workspace_id=ws.id, key_id=key_id) is None:
            raise typer.BadParameter(f"workspace {workspace!r} has no key {key_id}", param_hint="key_id")
    console.print(f"revoked key {key_id}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply migrations to AUTODIDACT_DATABASE_URL."""
    from shared.migrate import upgrade

    upgrade()
    console.print("schema is up to date")


@app.command()
def worker(queue: str = typer.Option(..., help="conductor | generation | judging | refinement | training"),
           concurrency: int = typer.Option(1, help="processes (the training queue always uses 1)"),
           loglevel: str = typer.Option("", help="default: AUTODIDACT_LOG_LEVEL, else INFO")) -> None:
    """Start a Celery worker for one queue (training: solo pool, one task at a time). With
    AUTODIDACT_WORKER_METRICS_PORT set, it serves Prometheus /metrics on that port."""
    from shared.config import get_settings

    if get_settings().worker_metrics_port:  # before the pool forks: its children write the metric files
        from shared.metrics import serve_worker_metrics

        serve_worker_metrics(get_settings().worker_metrics_port)
    from shared.queue import QUEUES, celery_app

    if get_settings().torch_threads > 0:
        import torch

        torch.set_num_threads(get_settings().torch_threads)
    if queue not in QUEUES:
        raise typer.BadParameter(f"choose one of {QUEUES}", param_hint="--queue")
    loglevel = loglevel or get_settings().log_level or "INFO"
    argv = ["worker", "-Q", queue, "-n", f"{queue}@%h", f"--loglevel={loglevel}", "--without-gossip",
            "--without-mingle"]
    if queue in ("training", "generation") or concurrency == 1:
        argv += ["--pool", "solo"]  # one model per process; GPU work one task at a time
    else:
        argv += ["--pool", "prefork", f"--concurrency={concurrency}"]
    celery_app.worker_main(argv)


@app.command()
def beat(loglevel: str = "INFO",
         schedule: str = typer.Option("", help="beat's state file (default: in the temp directory; "
                                      "the only entry is an interval, so losing it loses nothing)")) -> None:
    """Start Celery beat (the conductor's periodic sweep, every AUTODIDACT_SWEEP_INTERVAL_SECONDS)."""
    import tempfile

    from shared.queue import celery_app

    schedule = schedule or str(Path(tempfile.gettempdir()) / "autodidact-celerybeat-schedule")
    celery_app.start(["beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])


@app.command()
def gateway(host: str = "0.0.0.0", port: int = 8000, migrate: bool = True) -> None:
    """Serve the HTTP API (applies migrations first unless --no-migrate)."""
    import uvicorn

    if migrate:
        from shared.migrate import upgrade

        upgrade()
    from shared.logs import configure_logging

    configure_logging()
    uvicorn.run("services.gateway.main:app", host=host, port=port, log_config=None)  # our root handler logs


@app.command("tiny-model")
def tiny_model(out: Path) -> None:
    """Write a tiny random model + tokenizer (for trying the stack without a real model)."""
    from shared.tinymodel import build_tiny_model

    console.print(str(build_tiny_model(out)))


@app.command()
def run(embedded: bool = typer.Option(False, "--embedded", help="run in-process with SQLite"),
        method: str = "spin",
        prompts: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                               help="JSONL prompt set (uploaded first when submitting)"),
        eval_prompts: Optional[Path] = typer.Option(None, "--eval", exists=True, dir_okay=False),
        model: str = typer.Option("gemma", help="'gemma' or a local model directory (gateway: GET /v1/base-models)"),
        rounds: int = 1, config: str = typer.Option("{}", help="method config as JSON"),
        db: Optional[Path] = typer.Option(None, help="SQLite file (default: user cache)"),
        prompt_set: list[int] = typer.Option([], help="gateway: a prompt set already uploaded (repeatable)"),
        eval_set: list[int] = typer.Option([], help="gateway: a held-out prompt set already uploaded (repeatable)"),
        watch: bool = typer.Option(False, help="gateway: follow the run live until it ends"),
        url: cli_remote.Url = None, api_key: cli_remote.Key = None) -> None:
    """Run a method: in-process with --embedded, else submitted to the gateway (--url, AUTODIDACT_URL)."""
    try:
        config_dict = json.loads(config)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--config")
    if not embedded:
        raise typer.Exit(cli_remote.submit_run(
            method=method, model=model, rounds=rounds, config=config_dict, prompts=prompts,
            eval_prompts=eval_prompts, prompt_set_ids=prompt_set, eval_set_ids=eval_set, watch=watch,
            url=url, api_key=api_key))
    if prompts is None:
        raise typer.BadParameter("an embedded run needs --prompts FILE", param_hint="--prompts")
    _run_embedded(method=method, prompts=prompts, eval_prompts=eval_prompts, model=model, rounds=rounds,
                  config=config_dict, db=db)


@app.command()
def resume(run_id: int, db: Optional[Path] = typer.Option(None, help="SQLite file (default: user cache)")) -> None:
    """Go on with an embedded run whose process stopped before the run ended (Ctrl-C, a crash, a
    restart): what was finished is kept, the rest runs again in this process."""
    from services import embedded

    from shared.logs import configure_logging

    configure_logging(default="WARNING")
    embedded.configure(db)
    try:
        sent = embedded.resume(run_id)
    except (LookupError, ValueError) as exc:
        console.print(f"[red]cannot resume:[/red] {exc}")
        raise typer.Exit(2)
    console.print(f"run {run_id}: {sent} stage task(s) queued again")
    embedded.drive(run_id)
    _print_run(run_id)


def _run_embedded(**kw) -> int:
    from services import embedded

    from shared.logs import configure_logging

    configure_logging(default="WARNING")
    from rich.markup import escape

    from services.methods.runs import RunInvalid

    embedded.configure(kw.pop("db"))
    try:
        run_id = embedded.create_run(method=kw["method"], prompts=kw["prompts"], model=kw["model"],
                                     rounds=kw["rounds"], config=kw["config"], eval_prompts=kw["eval_prompts"],
                                     config_sets=kw.get("config_sets"))
    except RunInvalid as exc:  # the API's 422: the same messages, and nothing was stored
        for e in exc.errors:
            console.print("[red]invalid run:[/red] " + escape(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"))
        raise typer.Exit(2)
    embedded.drive(run_id)
    _print_run(run_id)
    return run_id


def _print_run(run_id: int) -> None:
    from shared import crud
    from shared.db import session_scope
    from shared.models import START_ROWS

    with session_scope() as s:
        run_row = crud.get_run(s, run_id=run_id)
        rounds = crud.rounds_of_run(s, run_id=run_id)
        table = Table(title=f"run {run_id} · {run_row.method} · {run_row.status}")
        for col in ("round", "pairs", "loss", "reward acc", "log-ratio margin before → after",
                    "held-out strict acc [95% CI]", "echo / limit / junk", "adopted", "seconds by stage"):
            table.add_column(col)
        for label, key in START_ROWS:
            if rounds and rounds[0].metrics.get(key):
                table.add_row(label, "", "", "", "", _acc(rounds[0].metrics[key]), _degen(rounds[0].metrics[key]), "", "")
        for r in rounds:
            t = r.metrics.get("train", {})
            ev = r.metrics.get("eval", {})
            secs = ", ".join(f"{k} {v.get('seconds', 0):.0f}" for k, v in r.stages.items())
            margin = (f"{t['logp_margin_before']:.2f} → {t['logp_margin_after']:.2f}"
                      if "logp_margin_before" in t else "-")
            if t.get("guard_stop"):
                margin += f" (guard: {t['guard_stop']['metric']} stop at step {t['guard_stop']['step']})"
            gate = r.metrics.get("gate")
            adopted = "-" if gate is None else ("yes" if gate["adopted"] else "no: " + "; ".join(gate["reasons"])[:80])
            table.add_row(str(r.number), str(r.metrics.get("pairs", "-")), _fmt(t.get("loss")),
                          _fmt(t.get("reward_accuracy")), margin, _acc(ev), _degen(ev), adopted, secs)
        console.print(table)
        _print_before_after(s, rounds)
        if run_row.error:
            console.print(f"[red]error:[/red] {run_row.error}")


def _print_before_after(session, rounds) -> None:
    """Held-out metrics of the base against the last round, and two answers side by side."""
    from shared import crud

    if not rounds or "eval_base" not in rounds[0].metrics or "eval" not in rounds[-1].metrics:
        return
    before, after = rounds[0].metrics["eval_base"], rounds[-1].metrics["eval"]
    table = Table(title=f"held-out prompts: base vs round {rounds[-1].number}")
    for col in ("metric", "before (base)", "after"):
        table.add_column(col)
    for key in ("prompt_strict_acc", "prompt_loose_acc", "instruction_strict_acc", "instruction_loose_acc"):
        table.add_row(key, _acc(before, key), _acc(after, key))
    for key in ("mean_response_words", "echo_rate", "limit_rate", "junk_rate"):
        table.add_row(key, _fmt(before.get(key)), _fmt(after.get(key)))
    console.print(table)
    base = {x.prompt_id: x.text for x in crud.samples_of_round(session, round_id=rounds[0].id, role="eval_base")}
    last = {x.prompt_id: x.text for x in crud.samples_of_round(session, round_id=rounds[-1].id, role="eval")}
    prompts = crud.prompts_by_id(session, ids=sorted(base)[:2])
    examples = Table(title="examples", show_lines=True)
    for col in ("prompt", "before", "after"):
        examples.add_column(col, max_width=50)
    for pid, p in prompts.items():
        examples.add_row(p.messages[-1]["content"][:300], base[pid][:300], last.get(pid, "")[:300])
    console.print(examples)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _fmt_ci(value, ci) -> str:
    """A judge accuracy with its 95 % interval over the probe's prompts."""
    return _fmt(value) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if value is not None and ci else "")


def _acc(ev: dict, key: str = "prompt_strict_acc") -> str:
    """Accuracy with its 95 % interval, e.g. 0.412 [0.335, 0.490] (n=160)."""
    if not ev or ev.get(key) is None:
        return "-"
    low, high = (ev.get("ci95") or {}).get(key) or (None, None)
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
    return f"{ev[key]:.3f}{ci} (n={ev.get('n')})"


def _degen(ev: dict) -> str:
    if not ev or ev.get("echo_rate") is None:
        return "-"
    return " / ".join("-" if ev.get(k) is None else f"{ev[k]:.0%}" for k in ("echo_rate", "limit_rate", "junk_rate"))


@app.command()
def plot(run_id: int, out: Path = typer.Option(Path("run.png")),
         db: Optional[Path] = typer.Option(None, help="embedded SQLite file (default: settings)")) -> None:
    """Draw a run's held-out accuracy and response length per round to a PNG."""
    from services.judging.evaluation import eval_series, plot_run
    from shared import crud
    from shared.db import session_scope

    if db is not None:
        from services import embedded

        embedded.configure(db)
    with session_scope() as s:
        series = eval_series(crud.rounds_of_run(s, run_id=run_id))
    if not series:
        raise typer.BadParameter(f"run {run_id} has no evaluation metrics", param_hint="run_id")
    plot_run(series, out)
    console.print(f"wrote {out}")


@app.command()
def curriculum(out: Path = typer.Option(EXAMPLES, help="directory for curriculum_{train,heldout,eft}.jsonl"),
               seed: int = 0, n_train: int = 200, n_heldout: int = 60, n_eft: int = 60) -> None:
    """Write the built-in verifiable-instruction curriculum as JSONL prompt sets."""
    from services.curriculum.generator import main as write

    write(["--out", str(out), "--seed", str(seed), "--n-train", str(n_train), "--n-heldout", str(n_heldout),
           "--n-eft", str(n_eft)])


@app.command("judge-agreement")
def judge_agreement(model: str = typer.Option("gemma", help="'gemma' or a local model directory"),
                    adapter: Optional[Path] = typer.Option(None, help="LoRA adapter of the judge version"),
                    prompts: Path = typer.Option(EXAMPLES / "curriculum_heldout.jsonl", exists=True),
                    limit: int = 12, samples: int = 2, votes: int = 3, max_new_tokens: int = 160,
                    out: Optional[Path] = typer.Option(None, help="write the full report as JSON")) -> None:
    """How often the model's rubric and refiner judgments agree with the verifier: parseable rate,
    verdict accuracy and balanced accuracy, rubric pairwise accuracy, per instruction type."""
    from services.generation.base import ModelRef
    from services.generation.registry import get_backend
    from services.judging.agreement import judge_agreement as measure
    from services.curriculum.generator import read_jsonl

    items = [it for it in read_jsonl(prompts) if it.get("constraints") and it.get("reference")][:limit]
    if not items:
        raise typer.BadParameter("needs prompts with constraints and a reference", param_hint="--prompts")
    report = measure(items, backend=get_backend("local"), model=ModelRef(model, str(adapter) if adapter else None),
                     samples_per_prompt=samples, votes=votes, max_new_tokens=max_new_tokens)
    table = Table(title=f"judge agreement with the verifier ({report['responses']} responses, "
                        f"{report['passing']} passing)")
    for col in ("judge", "parseable", "measure", "accuracy", "balanced accuracy", "decided"):
        table.add_column(col)
    r, f, ok = report["rubric"], report["refiner"], report["parseable"]
    table.add_row("rubric", _fmt(ok["rubric"]), "pairwise (ties ½)", _fmt_ci(r["accuracy"], r.get("ci95")), "",
                  str(r["pairs"]))
    table.add_row("refiner", _fmt(ok["refiner"]), "verdict", _fmt(f["accuracy"]),
                  _fmt_ci(f["balanced_accuracy"], f.get("balanced_ci95")), str(f["decided"]))
    console.print(table)
    types = Table(title="per instruction type")
    for col in ("instruction", "rubric pairwise", "refiner balanced"):
        types.add_column(col)
    for ident, v in report["by_type"].items():
        types.add_row(ident, _fmt(v["rubric"]["accuracy"]), _fmt(v["refiner"]["balanced_accuracy"]))
    console.print(types)
    if out is not None:
        out.write_text(json.dumps(report, indent=1))


DEMO_CONFIGS = {
    # Settings sized for one CPU: few samples and short answers. The papers' settings are the
    # defaults of each method's config and are what `autodidact run` and the API use.
    # SPIN: lr 5e-5 with 2 epochs collapsed the 270M model in one round (docs/results.md); 5e-6 is
    # the LoRA default (10x the paper's full-fine-tuning 5e-7), the training guards stand behind it.
    "spin": {"learning_rate": 5e-6, "later_learning_rate": 2e-6, "epochs": 2, "batch_size": 4,
             "max_new_tokens": 96, "max_response_tokens": 128, "temperature": 0.8, "top_p": 0.95},
    # ReST-EM with repairs: the setting that met the target (docs/results.md).
    "rest_em": {"samples_per_prompt": 4, "max_correct_per_prompt": 2, "max_new_tokens": 96,
                "learning_rate": 1e-4, "epochs": 2, "batch_size": 4, "repair_failed": True},
    "self_reward": {"new_prompts_per_round": 8, "few_shot": 4, "samples_per_prompt": 3, "judge_samples": 2,
                    "max_new_tokens": 96, "judge_max_new_tokens": 160, "bootstrap_learning_rate": 1e-4,
                    "learning_rate": 2e-5, "batch_size": 4},
    "spar": {"samples_per_prompt": 2, "judge_votes": 3, "max_new_tokens": 96, "judge_max_new_tokens": 160,
             "branching": 2, "keep": 1, "max_depth": 2, "search_budget": 4, "max_failed_per_round": 12,
             "learning_rate": 2e-5, "refiner_learning_rate": 5e-5, "batch_size": 4},
}


@app.command()
def demo(method: str = typer.Option("rest_em", help="rest_em | spin | self_reward | spar"), rounds: int = 1,
         model: str = typer.Option("gemma-chat", help="gemma-chat (the chat-capable start) or gemma (raw)"),
         heldout: int = typer.Option(60, help="held-out curriculum prompts to evaluate on (up to 200)"),
         db: Optional[Path] = None) -> None:
    """A run on Gemma 3 270M, embedded, from its chat-capable start, evaluated on held-out curriculum
    prompts (topics never trained on) before and after, with 95 % intervals.

    The methods train on 24 prompts of the built-in verifiable-instruction curriculum (SPIN on the
    shipped example prompts with gold answers written by us)."""
    import tempfile

    from services.curriculum.generator import read_jsonl, write_jsonl

    if method not in DEMO_CONFIGS:
        raise typer.BadParameter(f"choose one of {sorted(DEMO_CONFIGS)}", param_hint="--method")
    if not 10 <= heldout <= 200:
        raise typer.BadParameter("must be in 10..200", param_hint="--heldout")
    if model == "gemma-chat":
        _ensure_chat_start()
    prompts = EXAMPLES / ("spin_demo.jsonl" if method == "spin" else "demo_train.jsonl")
    sets = {"eft_prompt_set_ids": EXAMPLES / "demo_eft.jsonl"} if method == "self_reward" else None
    evals = write_jsonl(read_jsonl(EXAMPLES / "curriculum_heldout.jsonl")[:heldout],
                        Path(tempfile.mkdtemp(prefix="autodidact-demo-")) / "heldout.jsonl")
    _run_embedded(method=method, prompts=prompts, eval_prompts=evals, model=model,
                  rounds=rounds, config=DEMO_CONFIGS[method], db=db, config_sets=sets)


def _ensure_chat_start(retrain: bool = False) -> Path:
    from services.methods.chat_start import build_chat_start, shipped_adapter

    if retrain or shipped_adapter() is None:
        console.print("[yellow]training the chat-capable start (SFT on ~1,000 curriculum answers): about an "
                      "hour on a 2-core CPU, once; it is cached in ~/.cache/autodidact/models[/yellow]")
    with console.status("preparing the chat-capable start of Gemma 3 270M"):
        return build_chat_start(retrain=retrain)


@app.command()
def bootstrap(retrain: bool = typer.Option(False, help="train it again instead of merging the shipped adapter"),
              export: bool = typer.Option(False, help="store the trained adapter as the shipped one")) -> None:
    """Build the chat-capable start `gemma-chat` (services/methods/chat_start.py)."""
    path = _ensure_chat_start(retrain)
    console.print(f"chat-capable start ready: {path}")
    if export:
        from services.methods.chat_start import export_adapter

        if not (path / "adapter" / "adapter_model.safetensors").exists():
            raise typer.BadParameter("no trained adapter beside the model; use --retrain", param_hint="--export")
        console.print(f"adapter stored in {export_adapter(path / 'adapter')}")


@app.command()
def evaluate(model: str = typer.Option("gemma-chat", help="gemma, gemma-chat or a model directory"),
             adapter: Optional[Path] = typer.Option(None, help="a LoRA adapter on top of the model"),
             prompts: Path = typer.Option(EXAMPLES / "curriculum_heldout.jsonl", exists=True),
             limit: int = 160, max_new_tokens: int = 160,
             out: Optional[Path] = typer.Option(None, help="write metrics and answers as JSON")) -> None:
    """Held-out accuracy of one model (greedy answers, IFEval checks) with 95 % intervals, echo,
    token-limit, repetition and junk rates."""
    from services.curriculum.generator import read_jsonl
    from services.generation.base import ModelRef
    from services.generation.registry import get_backend
    from services.judging.heldout import evaluate_model

    if model == "gemma-chat":
        _ensure_chat_start()
    items = [it for it in read_jsonl(prompts) if it.get("constraints")][:limit]
    if not items:
        raise typer.BadParameter("needs prompts with constraints", param_hint="--prompts")
    m = evaluate_model(items, backend=get_backend("local"), model=ModelRef(model, str(adapter) if adapter else None),
                       max_new_tokens=max_new_tokens)
    table = Table(title=f"{model} on {len(items)} held-out prompts ({m['seconds']:.0f} s)")
    for col in ("metric", "value"):
        table.add_column(col)
    for key in ("prompt_strict_acc", "prompt_loose_acc", "instruction_strict_acc", "instruction_loose_acc"):
        table.add_row(key, _acc(m, key))
    for key in ("echo_rate", "limit_rate", "repetition_rate", "junk_rate", "mean_response_words"):
        table.add_row(key, _fmt(m.get(key)))
    console.print(table)
    if out is not None:
        out.write_text(json.dumps(m, indent=1))


if __name__ == "__main__":
    app()
