"""What the conductor tells the run's experiment tracker (shared/tracking.py).

Events are plain dicts built inside the conductor's transaction (they read a few rows) and sent
after commit, like its Celery messages: a slow or broken tracker never holds the run's lock and
never fails a round (`send` swallows and logs any error).

- start: the run's params (method, base model, rounds, prompt sets, and the method config);
- round: at step = round number, every numeric leaf of `Round.metrics` but the per-step series
  (those the training task logs): `eval/*` and `eval_base/*` (accuracies, their `ci95/*/low|high`,
  echo / limit / repetition / junk rates), `gate/*`, `judge_check/*`, training summaries as
  `<label>_summary/*` (not to be confused with the per-step `train/*`), `stage_seconds/<stage>`;
  the gate's reasons as text; the accuracy plot (`accuracy.png`, redrawn each round) and up to
  `PAIR_SAMPLE` of the round's preference pairs (`pairs/round-<n>.jsonl`);
- end: the run's final status.
"""
from __future__ import annotations

import functools
import io
import json
import logging

from sqlmodel import Session, select

from shared import crud
from shared.config import get_settings
from shared.models import PreferencePair, Prompt, Round, Run
from shared.tracking import TrackedRun, effective_backends, run_tracker

log = logging.getLogger(__name__)
PAIR_SAMPLE = 20


def _safe(build):
    """An event builder that returns None instead of raising: tracking never fails a round."""
    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        try:
            return build(*args, **kwargs)
        except Exception:  # noqa: BLE001
            log.warning("experiment tracking: could not build the %s event", build.__name__, exc_info=True)
            return None
    return wrapper


def _event(kind: str, run: Run, **data) -> dict:
    return {"kind": kind, "run": TrackedRun(run.id, run.method, run.created_at),
            "tracking": (run.config or {}).get("tracking"), **data}


@_safe
def started(run: Run) -> dict:
    params = {"method": run.method, "base_model": run.base_model, "rounds": run.rounds,
              "continuous": run.continuous, "prompt_set_ids": run.prompt_set_ids,
              "eval_prompt_set_ids": run.eval_prompt_set_ids, "stopping": run.stopping, "config": run.config}
    return _event("start", run, params=params)


def _summary_name(key: str) -> str:
    return f"{key}_summary" if key in ("train", "bootstrap") or key.startswith("train_") else key


@_safe
def round_closed(session: Session, run: Run, rnd: Round) -> dict | None:
    if not effective_backends(get_settings().tracking, (run.config or {}).get("tracking")):
        return None  # tracking off: spare the queries
    metrics = {_summary_name(k): v for k, v in (rnd.metrics or {}).items() if not k.endswith("_steps")}
    metrics["stage_seconds"] = {name: st["seconds"] for name, st in (rnd.stages or {}).items() if "seconds" in st}
    gate = (rnd.metrics or {}).get("gate")
    text = {}
    if gate:
        text["gate"] = ("adopted" if gate.get("adopted") else "not adopted") + (
            "; regressed: " + "; ".join(gate.get("reasons") or []) if gate.get("regressed") else "")
    rows = session.exec(select(PreferencePair, Prompt).join(Prompt, Prompt.id == PreferencePair.prompt_id)
                        .where(PreferencePair.round_id == rnd.id)
                        .order_by(PreferencePair.prompt_id, PreferencePair.index).limit(PAIR_SAMPLE)).all()
    pairs = [{"prompt_id": p.id, "messages": p.messages, "chosen": pp.chosen, "rejected": pp.rejected,
              "source": pp.source, "margin": pp.margin} for pp, p in rows]
    from services.judging.evaluation import eval_series

    return _event("round", run, step=rnd.number, metrics=metrics, text=text, pairs=pairs,
                  series=eval_series(crud.rounds_of_run(session, run_id=run.id)))


@_safe
def finished(run: Run) -> dict:
    return _event("end", run, status=run.status)


def send(events: list[dict]) -> None:
    """Log the events to each run's tracker; never raises."""
    for ev in events:
        if ev is None:
            continue
        try:
            tracker = run_tracker(get_settings(), ev["run"], ev["tracking"])
            if tracker:
                _send(tracker, ev)
        except Exception:  # noqa: BLE001 - tracking never fails a round
            log.warning("experiment tracking: could not log the %s of run %s", ev["kind"], ev["run"].run_id,
                        exc_info=True)


def _send(tracker, ev: dict) -> None:
    if ev["kind"] == "start":
        tracker.log_params(ev["params"])
    elif ev["kind"] == "round":
        step = ev["step"]
        tracker.log_metrics([(step, ev["metrics"])])
        if ev["text"]:
            tracker.log_text({f"{k}/round_{step}": v for k, v in ev["text"].items()}, step)
        if ev["pairs"]:
            data = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in ev["pairs"]).encode()
            tracker.log_artifact(f"pairs/round-{step}.jsonl", data, step)
        if ev["series"]:
            from services.judging.evaluation import plot_run

            buf = io.BytesIO()
            plot_run(ev["series"], buf)
            tracker.log_artifact("accuracy.png", buf.getvalue(), step)
    else:
        tracker.finish(ev["status"])
