"""Embedded mode: `autodidact run --embedded` runs a SPIN round in one process on SQLite, through
the same task functions the workers run, and prints the per-round table."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_embedded_spin_round_on_sqlite(tiny_model, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"list {i} fruits", "reference": "apple , banana ."}) + "\n"
                               for i in range(6)))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"name {i} colours, in lowercase",
                                         "constraints": [{"id": "change_case:english_lowercase", "kwargs": {}}]}) + "\n" for i in range(3)))
    db = tmp_path / "run.db"
    # the held-out answers get their own (smaller) token budget
    config = {"max_new_tokens": 16, "eval_max_new_tokens": 5, "learning_rate": 1e-3, "epochs": 1, "batch_size": 4,
              "lora_r": 4, "on_regression": "continue"}
    # JSON log lines at INFO on stderr (the table goes to stdout): they must carry the run's ids
    env = {**os.environ, "HOME": str(tmp_path), "AUTODIDACT_LOG_FORMAT": "json", "AUTODIDACT_LOG_LEVEL": "INFO"}
    env.pop("AUTODIDACT_DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "--embedded", "--method", "spin", "--prompts", str(prompts),
         "--model", tiny_model, "--rounds", "1", "--db", str(db), "--config", json.dumps(config), "--eval", str(held)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "succeeded" in out.stdout and "→" in out.stdout
    con = sqlite3.connect(db)
    assert con.execute("select status from run").fetchall() == [("succeeded",)]
    budgets = dict(con.execute("select role, max(token_count) from sample group by role").fetchall())
    assert budgets["policy"] > 5 and budgets["eval"] <= 5 and budgets["eval_base"] <= 5, budgets
    assert con.execute("select count(*) from sample where role = 'policy'").fetchone()[0] == 6
    (uri,) = con.execute("select uri from modelversion where kind = 'adapter'").fetchone()
    assert Path(uri).is_relative_to(tmp_path) and any(Path(uri).glob("*.safetensors"))
    stages = json.loads(con.execute("select stages from round").fetchone()[0])
    assert {k: v["status"] for k, v in stages.items()} == {
        "generate": "succeeded", "pairs": "succeeded", "train": "succeeded", "eval_generate": "succeeded",
        "evaluate": "succeeded"}
    logs = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    in_stages = [x for x in logs if x.get("stage")]
    assert in_stages, out.stderr[-2000:]
    assert all(x["run_id"] == 1 and x["round"] == 1 and x["task_id"] for x in in_stages)


def test_embedded_refuses_a_run_the_api_refuses(tiny_model, tmp_path):
    """Same run creation as the API: SPIN on prompts without gold references is refused with the
    API's 422 message, the command exits non-zero, and nothing is stored."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"list {i} fruits"}) + "\n" for i in range(3)))
    db = tmp_path / "run.db"
    # JSON log lines at INFO on stderr (the table goes to stdout): they must carry the run's ids
    env = {**os.environ, "HOME": str(tmp_path), "AUTODIDACT_LOG_FORMAT": "json", "AUTODIDACT_LOG_LEVEL": "INFO"}
    env.pop("AUTODIDACT_DATABASE_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "run", "--embedded", "--method", "spin", "--prompts", str(prompts),
         "--model", tiny_model, "--rounds", "1", "--db", str(db)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "prompt_set_ids: SPIN needs a gold `reference` for every prompt" in " ".join(out.stdout.split())
    con = sqlite3.connect(db)
    assert con.execute("select count(*) from run").fetchone()[0] == 0
    assert con.execute("select count(*) from promptset").fetchone()[0] == 0
