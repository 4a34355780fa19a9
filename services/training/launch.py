"""Run a training call on several processes with `accelerate launch`, and be its entry point.

When more than one GPU is visible (or TrainConfig.distributed is "ddp" / "fsdp"), train_pairs and
train_sft call `run_distributed`, which
1. writes a spec (kind, base model, config, adapters, paths) and the data (JSON lines) into a
   temporary directory,
2. runs `python -m accelerate.commands.launch [--multi_gpu | --use_fsdp ...] --num_processes N
   --module services.training.launch --spec spec.json` (see `build_launch_command`),
3. streams the per-step metrics that rank 0 appends to metrics.jsonl into the caller's on_step,
4. returns the summary rank 0 wrote to result.json, or raises ValueError with the log's tail.

Each launched process runs `main()`, which calls the same train_* function; the environment
variable AUTODIDACT_LAUNCHED stops it from launching again, and WORLD_SIZE > 1 makes the trainer
use accelerate's Accelerator (DDP / FSDP wrapping, no_sync under accumulation, clipping, gather).
Without CUDA the processes run on CPU with the gloo backend (`--cpu`), which is how the tests run
two processes; AUTODIDACT_TRAIN_PROCESSES sets their number (default 1).

FSDP: FULL_SHARD of each decoder layer with original parameters kept (LoRA mixes frozen and
trainable weights). Built and documented, but not exercised in this repository's tests (no
multi-GPU host); DDP is the tested multi-process path.
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from shared import logs
from shared.config import (
    LAUNCHED_CHILD, child_environment, get_settings, launched_child, mark_launched_child, process_rank,
)

log = logging.getLogger(__name__)
CHILD_ENV = LAUNCHED_CHILD


def should_launch(config) -> bool:
    if launched_child():
        return False
    if config.distributed != "none":
        return True
    import torch

    return config.device in ("auto", "cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 1


def build_launch_command(spec_path: str | Path, num_gpus: int, distributed: str, *,
                         cpu: bool = False, port: int | None = None) -> list[str]:
    """The `accelerate launch` command line running this module's main() on `num_gpus` processes."""
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    if distributed not in ("none", "ddp", "fsdp"):
        raise ValueError(f"distributed must be none, ddp or fsdp; got {distributed!r}")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
           "--num_processes", str(num_gpus)]
    if port is not None:
        cmd += ["--main_process_port", str(port)]
    if cpu:
        # accelerate's --cpu launcher starts one process (or needs MPI); its torchrun-based
        # --multi_gpu launcher also runs CPU processes, and the trainer picks gloo there.
        cmd += ["--mixed_precision", "no"] + (["--multi_gpu"] if num_gpus > 1 else ["--cpu"])
    else:
        cmd += ["--mixed_precision", "bf16"]
        if distributed == "fsdp":
            cmd += ["--use_fsdp", "--fsdp_version", "1", "--fsdp_sharding_strategy", "FULL_SHARD",
                    "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_use_orig_params", "true",
                    "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_sync_module_states", "true",
                    "--fsdp_backward_prefetch", "BACKWARD_PRE"]
        elif num_gpus > 1:
            cmd += ["--multi_gpu"]
    return cmd + ["--module", "services.training.launch", "--spec", str(spec_path)]


def write_spec(directory: Path, *, kind: str, base_model: str, items: list[dict], out_dir, config,
               init_adapter=None, ref_adapter=None, checkpoint_dir=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "data.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in items))
    spec = {"kind": kind, "base_model": base_model, "data": str(data), "out_dir": str(out_dir),
            "config": config.to_dict(), "init_adapter": init_adapter, "ref_adapter": ref_adapter,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None,
            "metrics": str(directory / "metrics.jsonl"), "result": str(directory / "result.json"),
            "log_context": logs.current_context()}  # the children's log lines carry the task's ids
    path = directory / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def run_distributed(*, kind, base_model, items, out_dir, config, init_adapter=None, ref_adapter=None,
                    checkpoint_dir=None, on_step=None) -> dict:
    import torch

    gpus = torch.cuda.device_count() if config.device != "cpu" else 0
    n = gpus or get_settings().train_processes
    with tempfile.TemporaryDirectory(prefix="autodidact-train-") as tmp:
        spec = write_spec(Path(tmp), kind=kind, base_model=base_model, items=items, out_dir=out_dir,
                          config=config, init_adapter=init_adapter, ref_adapter=ref_adapter,
                          checkpoint_dir=checkpoint_dir)
        cmd = build_launch_command(spec, n, config.distributed, cpu=gpus == 0, port=_free_port())
        log.info("launching %d training processes: %s", n, " ".join(cmd))
        logfile = Path(tmp) / "launch.log"
        with open(logfile, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    env=child_environment(), cwd=_repo_root())
            seen = 0
            while True:
                done = proc.poll() is not None
                seen = _relay_metrics(Path(tmp) / "metrics.jsonl", seen, on_step)
                if done:
                    break
                time.sleep(0.5)
        result = Path(tmp) / "result.json"
        if proc.returncode != 0 or not result.exists():
            tail = logfile.read_text(errors="replace")[-4000:]
            raise ValueError(f"distributed training exited with code {proc.returncode}; log tail:\n{tail}")
        return json.loads(result.read_text())


def _relay_metrics(path: Path, seen: int, on_step) -> int:
    if not path.exists():
        return seen
    text = path.read_text()
    complete = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # skip a half-written line
    for line in complete[seen:]:
        if on_step is not None:
            on_step(json.loads(line))
    return max(seen, len(complete))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--spec", required=True)
    spec = json.loads(Path(args.parse_args(argv).spec).read_text())
    mark_launched_child()
    with logs.log_context(**{**spec.get("log_context", {}), "rank": process_rank()}):
        _train(spec)


def _train(spec: dict) -> None:
    from services.training.config import TrainConfig
    from services.training.trainer import train_pairs, train_sft

    items = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines() if x.strip()]
    metrics = open(spec["metrics"], "a")  # noqa: SIM115 - appended to by on_step, closed below
    lock = threading.Lock()

    def on_step(m: dict) -> None:
        with lock:
            metrics.write(json.dumps(m) + "\n")
            metrics.flush()

    common = {"base_model": spec["base_model"], "out_dir": spec["out_dir"],
                  "config": TrainConfig.from_dict(spec["config"]), "init_adapter": spec["init_adapter"],
                  "checkpoint_dir": spec["checkpoint_dir"], "on_step": on_step}
    if spec["kind"] == "pairs":
        result = train_pairs(pairs=items, ref_adapter=spec["ref_adapter"], **common)
    else:
        result = train_sft(examples=items, **common)
    metrics.close()
    if process_rank() == 0:
        Path(spec["result"]).write_text(json.dumps(result))


if __name__ == "__main__":
    logs.configure_logging()
    main()
