"""Where a round's wall time goes in embedded mode: model compute against everything else (model
and adapter loads and saves, database, queue, serialisation, Python glue).

A sampler thread looks at the main thread's stack every few milliseconds while one embedded round
runs (the demo's settings, a subset of the demo's prompts) and files each sample under the first
of these that its stack contains:
- `load/save`: reading or writing model weights, adapters or tokenizers (from_pretrained,
  save_pretrained, load_adapter, peft wrapping, safetensors);
- `compute`: a torch module's forward, autograd's backward, an optimizer step;
- `database`: SQLAlchemy / the SQLite or Postgres driver;
- `other`: the rest (queue, conductor, judging code, tokenization, Python between tensors).
The overhead share is everything but `compute`. Sampling costs a little GIL time; torch kernels
release the GIL, so they are not slowed.

    python bench/overhead.py --model gemma --prompts 8 --eval-prompts 8
    python bench/overhead.py --model tiny

The last line is `ratio=<share of wall time not in model compute>`.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, even where another one is installed editable
EX = ROOT / "examples"

LOAD = ("from_pretrained", "save_pretrained", "load_adapter", "get_peft_model", "inject_adapter",
        "load_state_dict", "safe_open", "load_file", "_load_pretrained_model", "prepare_gemma", "unload")
COMPUTE_FILES = ("torch/nn/modules/module.py", "torch/autograd/", "torch/optim/")


def where(frame) -> str:
    """The innermost frame of this project's code: file:function."""
    while frame is not None:
        path = frame.f_code.co_filename
        if str(ROOT) in path and "/.venv/" not in path:
            return f"{Path(path).relative_to(ROOT)}:{frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def classify(frame) -> str:
    kinds = set()
    while frame is not None:
        code = frame.f_code
        if code.co_name in LOAD:
            return "load/save"
        path = code.co_filename
        if any(p in path for p in COMPUTE_FILES):
            kinds.add("compute")
        elif "sqlalchemy" in path or "sqlite3" in path or "psycopg" in path:
            kinds.add("database")
        frame = frame.f_back
    return "compute" if "compute" in kinds else "database" if "database" in kinds else "other"


class Sampler(threading.Thread):
    def __init__(self, thread_id: int, every: float = 0.005):
        super().__init__(daemon=True)
        self.target, self.every, self.counts, self.stop = thread_id, every, collections.Counter(), False
        self.places = collections.Counter()  # where the non-compute samples were, for the report

    def run(self) -> None:
        while not self.stop:
            frame = sys._current_frames().get(self.target)
            if frame is not None:
                kind = classify(frame)
                self.counts[kind] += 1
                if kind != "compute":
                    self.places[f"{kind} in {where(frame)}"] += 1
            time.sleep(self.every)


def subset(src: Path, n: int, out: Path) -> Path:
    out.write_text("\n".join(src.read_text().splitlines()[:n]) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma", help="'gemma', 'tiny' (a tiny random model) or a directory")
    ap.add_argument("--method", default="spin")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--eval-prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="autodidact-overhead-"))
    model = args.model
    if model == "tiny":
        from shared.tinymodel import build_tiny_model

        model = str(build_tiny_model(work / "tiny"))

    from services import embedded
    from services.cli import DEMO_CONFIGS
    from shared import crud
    from shared.db import session_scope

    embedded.configure(work / "bench.db", work / "artifacts")
    train = subset(EX / ("spin_demo.jsonl" if args.method == "spin" else "demo_train.jsonl"), args.prompts,
                   work / "train.jsonl")
    heldout = subset(EX / "demo_heldout.jsonl", args.eval_prompts, work / "heldout.jsonl")
    sets = {"eft_prompt_set_ids": subset(EX / "demo_eft.jsonl", args.prompts, work / "eft.jsonl")} \
        if args.method == "self_reward" else None
    config = {**DEMO_CONFIGS[args.method], "max_new_tokens": args.max_new_tokens}
    sampler = Sampler(threading.get_ident())
    t0 = time.monotonic()
    sampler.start()
    run_id = embedded.create_run(method=args.method, prompts=train, model=model, rounds=1, config=config,
                                 eval_prompts=heldout, config_sets=sets)
    embedded.drive(run_id, show_progress=False)
    sampler.stop = True
    wall = time.monotonic() - t0
    sampler.join()
    with session_scope() as s:
        run = crud.get_run(s, run_id=run_id)
        stages = {k: v.get("seconds") for r in crud.rounds_of_run(s, run_id=run_id) for k, v in r.stages.items()}
        status, error = run.status, run.error
    total = sum(sampler.counts.values()) or 1
    print(f"{args.method} round on {args.model}: {status} in {wall:.1f} s; stages (s): "
          + ", ".join(f"{k} {v:.1f}" for k, v in stages.items() if v is not None))
    if error:
        print("error:", error.splitlines()[0][:300])
    for kind in ("compute", "load/save", "database", "other"):
        print(f"  {kind:10} {sampler.counts[kind] / total:6.1%}  (~{wall * sampler.counts[kind] / total:.1f} s)")
    for place, count in sampler.places.most_common(6):
        print(f"    {count / total:6.1%}  {place}")
    print(f"ratio={1 - sampler.counts['compute'] / total:.3f}")


if __name__ == "__main__":
    main()
