"""Evaluate one model on a held-out prompt file, outside any run: greedy answers, IFEval checks,
intervals and degeneration rates — the same numbers a run's evaluation stage stores.

Used by `autodidact evaluate`, the demo and the benchmarks to put a model (the raw base, a chat
start, a round's version) on the same scale. Takes a generation backend and a model reference, so
it runs on any backend; nothing is stored.
"""
from __future__ import annotations

import time

from services.judging.evaluation import aggregate
from services.judging.verifier import verify


def evaluate_model(items: list[dict], *, backend, model, max_new_tokens: int = 160, batch: int = 0,
                   on_batch=None) -> dict:
    """items: prompt items {"prompt", "constraints", ...}; returns aggregate metrics plus the answers
    ({"answers": [{"prompt", "response", "finish_reason", "strict"}]}) and the wall seconds.
    `batch` prompts go to the backend per call (0: as many as the backend asks for, which keeps a
    continuously batching backend full; 16 at a time left the local backend at 16 rows)."""
    from services.generation.base import SamplingParams

    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, seed=0)
    if batch <= 0:
        batch = backend.batch_prompts(1) if hasattr(backend, "batch_prompts") else 16
    t0 = time.monotonic()
    rows = []
    for start in range(0, len(items), batch):
        chunk = items[start:start + batch]
        outs = backend.generate([[{"role": "user", "content": it["prompt"]}] for it in chunk], model, params)
        for it, comps in zip(chunk, outs):
            c = comps[0]
            v = verify(c.text, it["constraints"], it["prompt"]) if it.get("constraints") else None
            rows.append({"prompt_id": len(rows), "prompt": it["prompt"], "response": c.text,
                         "constraints": it.get("constraints"), "finish_reason": c.finish_reason, "verdict": v,
                         "tokens": c.token_count})
        if on_batch is not None:
            on_batch(len(rows), len(items))
    metrics = aggregate(rows)
    metrics["seconds"] = round(time.monotonic() - t0, 1)
    metrics["generated_tokens"] = sum(r["tokens"] for r in rows)
    metrics["answers"] = [{"prompt": r["prompt"], "response": r["response"], "finish_reason": r["finish_reason"],
                           "strict": None if r["verdict"] is None else r["verdict"].strict} for r in rows]
    return metrics
