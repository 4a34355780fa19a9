"""The remote CLI end to end: `autodidact run --watch` (no --embedded) uploads the prompt files to
a real gateway process, submits a 1-round SPIN run on a tiny model, and follows it through real
workers until it succeeds (exit status 0); then pairs and the plot are downloaded."""
from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner


TRAIN = [{"prompt": f"write about the lake number {i}", "reference": f"the lake {i} is deep ."} for i in range(4)]
HELDOUT = [{"prompt": f"describe the hill {i} without commas", "constraints": [{"id": "punctuation:no_comma", "kwargs": {}}]}
           for i in range(4)]
CONFIG = {"samples_per_prompt": 1, "max_new_tokens": 8, "epochs": 1, "batch_size": 4, "learning_rate": 1e-3,
          "lora_r": 4, "lora_alpha": 8, "last_round_beta": None}


def test_run_watch_follows_a_real_run_to_success(live_gateway, workers, tiny_model, tmp_path):
    from services.cli import app

    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("".join(json.dumps(x) + "\n" for x in TRAIN))
    held.write_text("".join(json.dumps(x) + "\n" for x in HELDOUT))
    auth = ["--url", live_gateway.url, "--api-key", live_gateway.admin]
    runner = CliRunner(env={"COLUMNS": "200"})
    r = runner.invoke(app, ["run", "--method", "spin", "--prompts", str(train), "--eval", str(held),
                            "--model", Path(tiny_model).name, "--config", json.dumps(CONFIG), "--watch", *auth])
    print(r.output)
    run_id = int(re.search(r"submitted run (\d+)", r.output).group(1))
    assert r.exit_code == 0, (r.output, workers.logs()[-5000:])
    assert f"run {run_id} succeeded" in r.output and "Traceback" not in r.output
    # the watch printed progress as it went (one line per change when not on a terminal) ...
    assert re.search(rf"^run {run_id} (queued|running) · round 1 running", r.output, re.M), r.output
    assert f"\nrun {run_id} succeeded" in r.output
    # ... and the final view: every stage done, held-out accuracy of the start and of round 1 with intervals
    assert re.search(r"✓ eval_generate", r.output) and r.output.count(" n=4") >= 2, r.output

    r = runner.invoke(app, ["runs", "pairs", str(run_id), "--out", str(tmp_path / "pairs.jsonl"), *auth])
    assert r.exit_code == 0 and "wrote 4 pairs" in r.output, r.output
    r = runner.invoke(app, ["runs", "plot", str(run_id), "--out", str(tmp_path / "run.png"), *auth])
    assert r.exit_code == 0 and (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"
