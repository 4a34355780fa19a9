"""A model version as a plain transformers model directory: the LoRA adapter merged into its base
(peft's `merge_and_unload`), the tokenizer, and a model card (README.md) that says how it was made.

`model_card` is pure (plain dicts in, Markdown out); `merge_to_dir` loads weights but touches no
database. The merge happens in float32 on the CPU, so the merged weights are exactly base + B·A·s;
the result is then saved in the requested dtype ("auto": the base's own). The directory is built
beside its destination and renamed into place, so a reader never sees half a model.
"""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Literal

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = ("auto", "float32", "bfloat16", "float16")
ACCURACIES = ("prompt_strict_acc", "prompt_loose_acc", "instruction_strict_acc", "instruction_loose_acc")
TRAIN_KEYS = ("examples", "pairs", "loss", "reward_accuracy", "logp_margin_before", "logp_margin_after",
              "train_seconds", "guard_stop", "skipped")


def _acc(ev: dict, key: str) -> str:
    if not ev or ev.get(key) is None:
        return "–"
    low, high = (ev.get("ci95") or {}).get(key) or (None, None)
    return f"{ev[key]:.3f} [{low:.3f}, {high:.3f}]" if low is not None else f"{ev[key]:.3f}"


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def model_card(version: dict, run: dict | None = None, rounds: list[dict] | None = None) -> str:
    """README.md of an exported version. `version`: a ModelVersion's fields; `run`: the run's
    (method, base_model, config, ...) or None for a base version; `rounds`: the run's rounds
    (number, metrics, produced_version_id) in order."""
    rounds = rounds or []
    method = run["method"] if run else "none (base model)"
    title = (f"Autodidact {method}, run {run['id']}, round {version.get('round_number')}" if run
             else f"Autodidact base model {version['base_model']}")
    lines = ["---", "library_name: transformers", "tags:", "- autodidact"]
    lines += [f"- {method}", "- lora-merged"] if run else []
    lines += ["---", "", f"# {title}", "",
              "A causal language model exported by Autodidact: the version's LoRA adapter merged into its base "
              "model (peft `merge_and_unload`), saved with the base's tokenizer. Load it with "
              "`AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`.", "",
              "| | |", "|---|---|", f"| method | {method} |", f"| base model | {version['base_model']} |",
              f"| model version | {version['id']} (`{version.get('key', '')}`, kind {version.get('kind', '')}) |"]
    if run:
        lines += [f"| run | {run['id']} ({run.get('status', '')}, {len(rounds)} round(s) of {run.get('rounds', '')}) |",
                  f"| round | {version.get('round_number')} |"]
    lines += [f"| parent version | {version.get('parent_id')} |", f"| promoted | {version.get('promoted', False)} |",
              f"| created | {version.get('created_at', '')} |", ""]
    evals = ([("start (base)", rounds[0]["metrics"]["eval_base"], "")] if rounds and
             rounds[0].get("metrics", {}).get("eval_base") else [])
    for r in rounds:
        ev = r.get("metrics", {}).get("eval")
        if ev:
            gate = r["metrics"].get("gate")
            adopted = "" if gate is None else ("yes" if gate.get("adopted") else "no: " + "; ".join(gate.get("reasons", [])))
            mark = " ← this version" if r.get("produced_version_id") == version["id"] else ""
            evals.append((f"{r['number']}{mark}", ev, adopted))
    lines += ["## Held-out evaluation by round", ""]
    if evals:
        lines += ["IFEval accuracies on the run's held-out prompts (greedy answers), with 95 % percentile-bootstrap "
                  "intervals over prompts.", "",
                  "| round | n | " + " | ".join(ACCURACIES) + " | adopted |",
                  "|---|---|" + "---|" * len(ACCURACIES) + "---|"]
        lines += [f"| {name} | {ev.get('n', '')} | " + " | ".join(_acc(ev, k) for k in ACCURACIES) + f" | {adopted} |"
                  for name, ev, adopted in evals]
    else:
        lines.append("No held-out evaluation: the run had no `eval_prompt_set_ids`.")
    own = version.get("metrics") or {}
    shown = {k: own[k] for k in TRAIN_KEYS if k in own}
    if shown:
        lines += ["", "## Training of this version", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_value(v)} |" for k, v in shown.items()]
    if run:
        lines += ["", "## Configuration", "", "```json",
                  json.dumps({k: run.get(k) for k in ("method", "base_model", "rounds", "continuous", "stopping",
                                                      "prompt_set_ids", "eval_prompt_set_ids", "config")},
                             indent=2, default=str), "```"]
    return "\n".join(lines) + "\n"


def _torch_dtype(name: str, config):
    import torch

    if name == "auto":
        name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
        name = name.removeprefix("torch.")
    if name not in DTYPES[1:]:
        raise ValueError(f"dtype {name!r} cannot be saved; use one of {DTYPES}")
    return getattr(torch, name)


def merge_to_dir(base_model: str, adapter: str | None, out_dir: str | Path, *, card: str,
                 dtype: Dtype = "auto", extra: dict | None = None) -> Path:
    """Write base (+ adapter, merged) with its tokenizer, `card` as README.md and `extra` as
    autodidact.json to `out_dir` (replaced if present). Returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from shared.modeling import resolve_base

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}")
    base_dir = str(resolve_base(base_model))
    try:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        target = _torch_dtype(dtype, model.config)
        model.to(target).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base_dir).save_pretrained(tmp)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        (tmp / "autodidact.json").write_text(json.dumps(extra or {}, indent=1, default=str), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
