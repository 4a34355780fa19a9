"""Where a round's wall time goes, in embedded mode or through the Celery stack: model compute
against everything else (model and adapter loads and saves, database, queue, serialisation, glue).

One round runs with the demo's settings on a subset of the demo's prompts. A sampler thread looks at
the stack of the thread that does the work every few milliseconds and files each sample under the
first of these that its stack contains (shared/profiling.py):
- `load/save`: reading or writing model weights, adapters or tokenizers (from_pretrained,
  save_pretrained, load_adapter, peft wrapping, safetensors);
- `compute`: a torch module's forward, autograd's backward, an optimizer step;
- `database`: SQLAlchemy / the SQLite or Postgres driver;
- `other`: the rest (conductor, judging code, tokenization, Python between tensors).
Sampling costs a little GIL time; torch kernels release the GIL, so they are not slowed.

`--stack embedded` (default): the round runs in this process (SQLite, inline queue) and the
sampler watches the main thread; shares are shares of the samples.

`--stack celery`: the same round through the distributed path: real `autodidact worker`
subprocesses, one per queue, and `autodidact beat`, on a fresh Postgres database (dropped at the
end) and a Redis database of its own (`--redis`, flushed before and after). The run is created in
this process as the gateway would (its own thread is sampled while it does). Each worker runs with
AUTODIDACT_PROFILE_DIR set, so it samples the thread that runs its tasks from task_prerun to
task_postrun and writes each task's samples with wall-clock times. All tasks are laid on one time
line (1 ms bins) from the run's creation to the end of the task that finished it; a bin counts as
`compute` when any worker computes in it, else as the busiest other kind any worker is in, else as
`queue/idle`: no task running anywhere (broker waits, dispatch, message serialisation, worker
polling, gaps between stages). The overhead share is everything but `compute`, so work that
overlaps compute on another worker is not counted against the stack.

    python bench/overhead.py --model gemma --prompts 8 --eval-prompts 8
    python bench/overhead.py --model gemma --prompts 8 --eval-prompts 8 --stack celery
    python bench/overhead.py --model tiny
    python bench/overhead.py --model tiny --stack celery
    python bench/overhead.py --model tiny --stack celery --torch-threads 1   # a busy CPU host
    python bench/overhead.py --model gemma --stack celery --warmup          # steady state, not cold

`--warmup` runs the same round once before the measured one, so that one-off costs of a fresh
process (imports of transformers' model code, NLTK, lazily imported modules) are left out: the
steady state of a stack that has run rounds already. Without it the measured round is a cold one.
`--torch-threads` sets torch's threads in this process and in every worker (0: torch's default).
On a CPU host that is busy with other work, OpenMP threads waiting for each other spin inside a
module's forward and inflate `compute` several times over; compare both stacks at the same value.
Worker start-up is not counted: every worker has logged `ready.` before the run is created.

The last line is `ratio=<share of wall time not in model compute>`.
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, even where another one is installed editable
EX = ROOT / "examples"
QUEUES = ("conductor", "generation", "judging", "refinement", "training")
ORDER = ("compute", "load/save", "database", "other", "queue/idle")  # the time line's priority, highest first


def subset(src: Path, n: int, out: Path) -> Path:
    out.write_text("\n".join(src.read_text().splitlines()[:n]) + "\n")
    return out


def round_inputs(args, work: Path) -> dict:
    """create_run's keyword arguments for the round both stacks run."""
    from services.cli import DEMO_CONFIGS

    train = subset(EX / ("spin_demo.jsonl" if args.method == "spin" else "demo_train.jsonl"), args.prompts,
                   work / "train.jsonl")
    heldout = subset(EX / "demo_heldout.jsonl", args.eval_prompts, work / "heldout.jsonl")
    sets = {"eft_prompt_set_ids": subset(EX / "demo_eft.jsonl", args.prompts, work / "eft.jsonl")} \
        if args.method == "self_reward" else None
    return dict(method=args.method, prompts=train, rounds=1, eval_prompts=heldout, config_sets=sets,
                config={**DEMO_CONFIGS[args.method], "max_new_tokens": args.max_new_tokens})


def run_summary(run_id: int) -> tuple[str, str | None, dict]:
    from shared import crud
    from shared.db import session_scope

    with session_scope() as s:
        run = crud.get_run(s, run_id=run_id)
        stages = {k: v.get("seconds") for r in crud.rounds_of_run(s, run_id=run_id) for k, v in r.stages.items()}
        return run.status, run.error, stages


def headline(args, label: str, status: str, error: str | None, wall: float, stages: dict) -> None:
    label += ", after a warm-up round" if args.warmup else ""
    print(f"{args.method} round on {args.model}{label}: {status} in {wall:.1f} s; stages (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if v is not None))
    if error:
        print("error:", error.splitlines()[0][:300])


# ---------------------------------------------------------------- embedded
def embedded_round(args, work: Path, model: str) -> None:
    from services import embedded
    from shared.profiling import Sampler

    embedded.configure(work / "bench.db", work / "artifacts")
    inputs = round_inputs(args, work)
    if args.warmup:  # imports, caches: what a process that ran a round already has
        embedded.drive(embedded.create_run(model=model, **inputs), show_progress=False)
    sampler = Sampler(threading.get_ident())
    t0 = time.monotonic()
    sampler.start()
    run_id = embedded.create_run(model=model, **inputs)
    embedded.drive(run_id, show_progress=False)
    sampler.stop = True
    wall = time.monotonic() - t0
    sampler.join()
    status, error, stages = run_summary(run_id)
    total = sum(sampler.counts.values()) or 1
    headline(args, "", status, error, wall, stages)
    for kind in ORDER[:-1]:
        print(f"  {kind:10} {sampler.counts[kind] / total:6.1%}  (~{wall * sampler.counts[kind] / total:.1f} s)")
    for place, count in sampler.places.most_common(6):
        print(f"    {count / total:6.1%}  {place}")
    print(f"ratio={1 - sampler.counts['compute'] / total:.3f}")


# ---------------------------------------------------------------- celery
class Stack:
    """`autodidact worker` per queue and `autodidact beat`, as subprocesses (tests/conftest.py's
    Workers); each in a session of its own, so stopping one stops its children too."""

    def __init__(self, env: dict, log_dir: Path):
        self.env, self.log_dir, self.procs = {**os.environ, **env}, log_dir, {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str) -> None:
        argv = (["beat", "--loglevel", "INFO", "--schedule", str(self.log_dir / "beat-schedule")] if name == "beat"
                else ["worker", "--queue", name, "--loglevel", "INFO"])
        with open(self.log_dir / f"{name}.log", "w") as log:
            self.procs[name] = subprocess.Popen([sys.executable, "-m", "services.cli", *argv], env=self.env,
                                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> None:
        """Every worker has logged `ready.` (beat has no such line)."""
        deadline = time.monotonic() + timeout
        waiting = [q for q in self.procs if q != "beat"]
        while waiting:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            waiting = [q for q in waiting if " ready." not in self.log(q)]
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {timeout:.0f} s: {waiting}")
            time.sleep(0.5)

    def wait_idle(self, profile: Path, quiet: float = 1.0) -> None:
        """No worker has written a task record for `quiet` seconds (the warm-up's last tasks ended)."""
        while True:
            last = max((p.stat().st_mtime for p in profile.glob("*.jsonl")), default=0.0)
            if time.time() - last >= quiet:
                return
            time.sleep(0.2)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            del self.procs[name]


def paint(line, t0: float, start: float, end: float, priority: int, ms: float = 0.001) -> None:
    import numpy as np

    a, b = max(0, round((start - t0) / ms)), min(len(line), round((end - t0) / ms))
    if b > a:
        np.maximum(line[a:b], priority, out=line[a:b])


def analyse(records: list[dict], t0: float, t1: float) -> tuple[collections.Counter, dict, collections.Counter]:
    """Seconds of the wall time [t0, t1] by kind (ORDER), each queue's task seconds by kind, and
    the non-compute places in worker seconds."""
    import numpy as np

    from shared.profiling import KINDS

    priority = {kind: len(ORDER) - 1 - i for i, kind in enumerate(ORDER)}  # compute 4 ... queue/idle 0
    line = np.zeros(max(1, round((t1 - t0) * 1000)), dtype=np.int8)
    by_queue: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    places: collections.Counter = collections.Counter()
    for r in records:
        if r["end"] <= t0 or r["start"] >= t1:
            continue
        queue = r["task"].split(".", 1)[0]
        by_queue[queue]["tasks"] += 1
        prev = r["start"]
        for t, code in [*r["samples"], (r["end"], KINDS.index("other"))]:  # after the last sample: postrun
            kind = KINDS[code]
            paint(line, t0, prev, t, priority[kind])
            by_queue[queue][kind] += max(0.0, t - prev)
            prev = t
        per_sample = (r["end"] - r["start"]) / max(1, len(r["samples"]))
        for place, n in r["places"].items():
            places[f"{place} [{queue}]"] += n * per_sample
    counts = np.bincount(line, minlength=len(ORDER))
    wall = {kind: counts[priority[kind]] / 1000 for kind in ORDER}
    return collections.Counter(wall), by_queue, places


def wait_finished(args, stack: Stack, run_id: int) -> tuple[str, str | None, dict]:
    deadline = time.monotonic() + args.timeout
    while True:
        status, error, stages = run_summary(run_id)
        if status in ("succeeded", "failed", "cancelled", "stopped"):
            return status, error, stages
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} still {status} after {args.timeout} s")
        for q, proc in stack.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{q} exited with {proc.returncode}:\n{stack.log(q)[-3000:]}")
        time.sleep(0.25)


def celery_round(args, work: Path, model: str, env: dict) -> None:
    import psycopg
    import redis

    from services import embedded
    from shared.config import get_settings
    from shared.migrate import upgrade
    from shared.profiling import KINDS, Sampler, read_records

    name = env["AUTODIDACT_DATABASE_URL"].rsplit("/", 1)[1]
    broker = redis.Redis.from_url(args.redis, socket_timeout=5)
    stack = Stack({**env, "AUTODIDACT_PROFILE_DIR": str(work / "profile")}, work / "logs")
    created = False
    try:
        with psycopg.connect(args.pg, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created = True
        upgrade(env["AUTODIDACT_DATABASE_URL"])
        broker.flushdb()
        for name_ in (*QUEUES, "beat"):
            stack.start(name_)
        stack.wait_ready()
        inputs = round_inputs(args, work)
        if args.warmup:  # imports, caches: workers that ran a round already
            wait_finished(args, stack, embedded.create_run(model=model, **inputs))
            stack.wait_idle(work / "profile")
            for path in (work / "profile").glob("*.jsonl"):
                path.unlink()

        # This process plays the gateway: its thread is sampled while it creates the run.
        sampler = Sampler(threading.get_ident(), timeline=True)
        t0 = time.time()
        sampler.start()
        run_id = embedded.create_run(model=model, **inputs)
        created_at = time.time()
        sampler.stop = True
        sampler.join()
        counts, places, samples = sampler.take()
        gateway = {"task": "gateway.create_run", "start": t0, "end": created_at, "places": dict(places),
                   "samples": [(t, KINDS.index(k)) for t, k in samples]}
        status, error, stages = wait_finished(args, stack, run_id)
        seen = time.time()
        stack.stop()  # every task record is written at task_postrun
        records = [r for r in read_records(work / "profile") if r["start"] < seen]
        t1 = max([created_at, *(r["end"] for r in records)])  # the end of the task that ended the run
        wall_by, by_queue, worker_places = analyse([gateway, *records], t0, t1)
        wall = t1 - t0
        headline(args, " (celery: a worker per queue and beat)", status, error, wall, stages)
        for kind in ORDER:
            print(f"  {kind:10} {wall_by[kind] / wall:6.1%}  (~{wall_by[kind]:.1f} s)")
        print("  queue/idle: no task running in any worker (broker waits, dispatch, serialisation, gaps between "
              "stages)")
        print("  task seconds by queue (workers can overlap):")
        for queue, c in sorted(by_queue.items(), key=lambda kv: -sum(kv[1][k] for k in KINDS)):
            busy = sum(c[k] for k in KINDS)
            print(f"    {queue:11} {c['tasks']:3d} tasks {busy:7.1f} s: "
                  + ", ".join(f"{k} {c[k]:.1f}" for k in KINDS))
        print("  top non-compute places (worker seconds):")
        for place, secs in worker_places.most_common(6):
            print(f"    {secs / wall:6.1%}  (~{secs:.1f} s)  {place}")
        print(f"ratio={1 - wall_by['compute'] / wall:.3f}")
    finally:
        stack.stop()
        from shared.db import _engine_for

        _engine_for.cache_clear()  # close this process's pool before the database goes
        if created:
            with psycopg.connect(args.pg, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        try:
            broker.flushdb()
        except redis.RedisError as exc:
            print(f"could not flush {args.redis}: {exc}", file=sys.stderr)
        get_settings.cache_clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma", help="'gemma', 'tiny' (a tiny random model) or a directory")
    ap.add_argument("--method", default="spin")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--eval-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--stack", choices=("embedded", "celery"), default="embedded",
                    help="embedded: in this process; celery: worker processes, Postgres and Redis")
    ap.add_argument("--pg", default=os.environ.get("AUTODIDACT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"),
                    help="celery: a Postgres URL allowed to CREATE DATABASE (a fresh one is made and dropped)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/9",
                    help="celery: the broker; this Redis database is flushed before and after")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch threads of this process and of each worker (0: torch's default); on a "
                         "busy CPU host use 1, or idle OpenMP threads spin inside forward and count as compute")
    ap.add_argument("--warmup", action="store_true",
                    help="run the same round once first and measure the second (imports and caches warm)")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="celery: seconds to wait for the round")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="autodidact-overhead-"))
    env = {}
    if args.stack == "celery":
        # Before any project module reads the settings: shared.queue makes the Celery app at import.
        env = {"AUTODIDACT_DATABASE_URL": args.pg.rsplit("/", 1)[0] + f"/autodidact_overhead_{uuid.uuid4().hex[:8]}",
               "AUTODIDACT_REDIS_URL": args.redis, "AUTODIDACT_EXECUTION": "celery",
               "AUTODIDACT_ARTIFACT_DIR": str(work / "artifacts"), "TOKENIZERS_PARALLELISM": "false"}
        os.environ.update(env)
        os.environ.pop("AUTODIDACT_PROFILE_DIR", None)  # only the workers sample
    if args.torch_threads > 0:
        import torch

        torch.set_num_threads(args.torch_threads)
        env["AUTODIDACT_TORCH_THREADS"] = str(args.torch_threads)
        os.environ["AUTODIDACT_TORCH_THREADS"] = str(args.torch_threads)
    # SIGTERM (a coordinator's timeout) unwinds like Ctrl-C, through the finally that stops the workers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    model = args.model
    if model == "tiny":
        from shared.tinymodel import build_tiny_model

        model = str(build_tiny_model(work / "tiny"))
    if args.stack == "celery":
        celery_round(args, work, model, env)
    else:
        embedded_round(args, work, model)


if __name__ == "__main__":
    main()
