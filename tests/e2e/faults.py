"""What the fault tests (test_faults.py) share: the invariants a finished SPaR run must hold,
the private stack, a worker killer that measures recovery, and small waits on the database."""
from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlmodel import Session, select

from shared.models import (
    Judgment, ModelVersion, PreferencePair, RefinementNode, Round, Run, Sample, StageTask,
)
from tests.conftest import Workers, wait_for
from tests.e2e.helpers import FINISHED
from tests.fakes import judge_passes

TRAIN = {"learning_rate": 1e-3, "epochs": 1, "batch_size": 4, "lora_r": 4, "lora_alpha": 8,
         "train": {"checkpoint_every": 1}}
NO_COMMA = [{"id": "punctuation:no_comma", "kwargs": {}}]
SPAR = {"samples_per_prompt": 3, "max_new_tokens": 12, "judge_votes": 3, "branching": 2, "keep": 1,
        "max_depth": 2, "search_budget": 4, **TRAIN,
        # the refiner judges from round 1 as the paper's does (no verifier bootstrap, no judge check)
        "bootstrap_judge": False, "judge_check_prompts": 0}
# stage -> queue of SPaR's stages (services/methods/spar.py)
SPAR_QUEUES = {"generate": "generation", "judge": "judging", "refine": "refinement", "pairs": "judging",
               "train": "training", "train_refiner": "training"}


def record(figures: dict) -> None:
    print("FAULT FIGURES", json.dumps(figures))
    path = os.environ.get("AUTODIDACT_FAULT_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


# ---------------------------------------------------------------- invariants


def check_spar_run(engine, run_id: int, n_prompts: int, rounds: int) -> dict:
    """Everything a finished SPaR run must hold exactly once; returns the counts."""
    counts = Counter()
    with Session(engine) as s:
        run = s.get(Run, run_id)
        assert run.status == "succeeded", run.error
        rnds = s.exec(select(Round).where(Round.run_id == run_id).order_by(Round.number)).all()
        assert [r.number for r in rnds] == list(range(1, rounds + 1))
        for rnd in rnds:
            samples = s.exec(select(Sample).where(Sample.round_id == rnd.id, Sample.role == "policy")).all()
            keys = [(x.prompt_id, x.index) for x in samples]
            assert len(keys) == len(set(keys)) == n_prompts * SPAR["samples_per_prompt"], f"round {rnd.number} samples"
            ids = [x.id for x in samples]
            votes = s.exec(select(Judgment).where(Judgment.sample_id.in_(ids))).all()
            per_sample = Counter((j.sample_id, j.kind, j.vote_index) for j in votes)
            assert max(per_sample.values()) == 1
            assert Counter(j.sample_id for j in votes) == dict.fromkeys(ids, SPAR["judge_votes"])
            # one tree per distinct failed answer (identical answers to one prompt are searched once)
            key = {x.id: (x.prompt_id, " ".join(x.text.split())) for x in samples if not judge_passes(x.text)}
            roots = s.exec(select(RefinementNode).where(RefinementNode.sample_id.in_(ids),
                                                        RefinementNode.depth == 0)).all()
            searched = [key.get(r.sample_id) for r in roots]
            assert None not in searched and sorted(searched) == sorted(set(key.values())), \
                f"round {rnd.number}: one tree per distinct failure"
            pairs = s.exec(select(PreferencePair).where(PreferencePair.round_id == rnd.id)).all()
            assert len({(p.prompt_id, p.source, p.index) for p in pairs}) == len(pairs) == len(roots)
            nodes = s.exec(select(RefinementNode).where(RefinementNode.sample_id.in_(ids))).all()
            counts.update(samples=len(samples), votes=len(votes), trees=len(roots), nodes=len(nodes), pairs=len(pairs))
        versions = s.exec(select(ModelVersion).where(ModelVersion.run_id == run_id)).all()
        keys = Counter(v.key.split(":", 2)[2] for v in versions)
        expected = {f"round:{t}:{role}" for t in range(1, rounds + 1) for role in ("policy", "refiner")}
        assert keys == dict.fromkeys(expected, 1), keys
        counts["versions"] = len(versions)
    return dict(counts)


# ---------------------------------------------------------------- a private stack


@dataclass
class Stack:
    pg: object
    redis: object
    procs: Workers
    client: httpx.Client
    engine: object
    log_dir: Path
    tiny_model: str

    def submit_spar(self, n_prompts: int, rounds: int) -> int:
        items = [{"prompt": f"write about the stone {i}", "constraints": NO_COMMA} for i in range(n_prompts)]
        ps = self.client.post("/v1/prompt-sets", json={"name": "faults", "items": items})
        assert ps.status_code == 201, ps.text
        r = self.client.post("/v1/runs", json={"method": "spar", "base_model": self.tiny_model,
                                                "prompt_set_ids": [ps.json()["id"]], "rounds": rounds,
                                                "config": SPAR})
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def status(self, run_id: int) -> str:
        with Session(self.engine) as s:
            return s.get(Run, run_id).status

    def wait_finished(self, run_id: int, timeout: float = 900) -> None:
        try:
            wait_for(lambda: self.status(run_id) in FINISHED, timeout=timeout,
                     interval=1, what=f"run {run_id} to finish")
        except AssertionError:
            print(self.procs.logs())
            raise


# ---------------------------------------------------------------- killing workers


class Killer:
    """SIGKILLs the worker of a queue at a random point of one of its running StageTasks, restarts
    it at once, and measures how long until the task was claimed again (the heartbeat going
    stale, the sweep resending it, a worker taking it)."""

    def __init__(self, procs: Workers, engine, run_id: int, stage_queue: dict[str, str], seed: int = 0):
        self.procs, self.engine, self.run_id, self.stage_queue = procs, engine, run_id, stage_queue
        self.rng = random.Random(seed)
        self.kills: list[dict] = []

    def _running(self, queue: str) -> StageTask | None:
        stages = [s for s, q in self.stage_queue.items() if q == queue]
        with Session(self.engine) as s:
            return s.exec(select(StageTask).join(Round, Round.id == StageTask.round_id).where(
                Round.run_id == self.run_id, StageTask.status == "running", StageTask.stage.in_(stages))).first()

    def _task(self, task_id: int) -> StageTask:
        with Session(self.engine) as s:
            return s.get(StageTask, task_id)

    def _finished(self) -> bool:
        with Session(self.engine) as s:
            return s.get(Run, self.run_id).status != "running" and s.get(Run, self.run_id).status != "queued"

    def kill_once(self, queue: str, max_delay: float) -> dict | None:
        """One kill while `queue` works on a task of the run, or None when the run ended first."""
        task = None
        while task is None:
            if self._finished():
                return None
            task = self._running(queue)
            if task is None:
                time.sleep(0.05)
        time.sleep(self.rng.uniform(0, max_delay))
        task = self._task(task.id)
        if task.status != "running":
            return {"queue": queue, "stage": task.stage, "hit": False}
        self.procs.kill(queue)
        killed = time.monotonic()
        self.procs.start(queue)
        wait_for(lambda: (t := self._task(task.id)).attempts > task.attempts or t.status == "done",
                 timeout=300, interval=0.1, what=f"stage task {task.id} to be claimed again")
        again = self._task(task.id)
        kill = {"queue": queue, "stage": task.stage, "task": task.id, "hit": again.attempts > task.attempts,
                "recover_s": round(time.monotonic() - killed, 1)}
        self.kills.append(kill)
        return kill


def summarize(kills: list[dict]) -> dict:
    out = {}
    for queue in sorted({k["queue"] for k in kills}):
        mine = [k for k in kills if k["queue"] == queue and k["hit"]]
        secs = sorted(k["recover_s"] for k in mine)
        out[queue] = {"kills": len(mine), "recover_s_median": secs[len(secs) // 2] if secs else None,
                      "recover_s_max": secs[-1] if secs else None}
    return out


def stage_running(engine, run_id: int, stage: str) -> bool:
    with Session(engine) as s:
        return s.exec(select(StageTask).join(Round, Round.id == StageTask.round_id).where(
            Round.run_id == run_id, StageTask.stage == stage, StageTask.status == "running")).first() is not None


def in_flight(engine, run_id: int) -> list[int]:
    """StageTasks of the run that are pending or running now (their messages may be lost)."""
    with Session(engine) as s:
        return list(s.exec(select(StageTask.id).join(Round, Round.id == StageTask.round_id).where(
            Round.run_id == run_id, StageTask.status.in_(["pending", "running"]))).all())


def all_done(engine, task_ids: list[int], timeout: float) -> float:
    """When every one of `task_ids` is done; monotonic time."""
    def done() -> bool:
        with Session(engine) as s:
            return all(s.get(StageTask, t).status == "done" for t in task_ids)

    wait_for(lambda: try_(done) == 2, timeout=timeout, interval=0.2, what=f"stage tasks {task_ids} to finish")
    return time.monotonic()


def prompt_set_of(engine, run_id: int) -> int:
    with Session(engine) as s:
        return s.get(Run, run_id).prompt_set_ids[0]


def progress_after(engine, run_id: int, timeout: float) -> float:
    """When the next StageTask of the run is finished (the stack works again); monotonic time."""
    def done_count() -> int:
        with Session(engine) as s:
            return len(s.exec(select(StageTask.id).join(Round, Round.id == StageTask.round_id).where(
                Round.run_id == run_id, StageTask.status == "done")).all())

    before = wait_for(lambda: try_(done_count), timeout=60, interval=0.2, what="the database") - 1
    wait_for(lambda: (try_(done_count) or 0) - 1 > before, timeout=timeout, interval=0.2,
             what="a stage task to finish after the restart")
    return time.monotonic()


def try_(fn):
    """fn() + 1 (so that 0 is truthy), or None while the database is unreachable."""
    try:
        return fn() + 1
    except Exception:  # noqa: BLE001 - the server is restarting
        return None
