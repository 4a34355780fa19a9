"""SPaR's refine stage: tree searches one at a time against the same searches in lockstep.

A search asks the refiner for `branching` rewrites of one answer at a time, so a task that ran its
searches one after another handed the generation backend 2-4 rows per call; the refinement task now
runs a shard's searches in lockstep (services/refinement/search.py `tree_searches`) and each step's
rewrites of all of them go to the backend as one call. This bench runs both ways on the same failed
answers with the same model calls (`services/refinement/tasks.py` `model_calls`), in the same
process, and prints wall time, rewrites per second and the ratio.

Failed answers: the chat-capable start's greedy answers to curriculum *training* prompts that the
verifier fails (no held-out prompt is used). The verifier judges the rewrites (SPaR with
`judge: hybrid` on prompts with constraints), so the time is the refiner's generation.

    .venv/bin/python bench/refine_search.py                 # 32 failed answers, branching 3, depth 2
    .venv/bin/python bench/refine_search.py --searches 8    # quicker

The last line is `ratio=<lockstep rewrites/s over one-at-a-time rewrites/s>`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--searches", type=int, default=32)
    ap.add_argument("--branching", type=int, default=3)
    ap.add_argument("--max-depth", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=96, help="the actor's answer length; rewrites get 32 more")
    ap.add_argument("--model", default="gemma-chat")
    args = ap.parse_args()

    from services.cli import _ensure_chat_start
    from services.curriculum.generator import read_jsonl
    from services.generation.base import ModelRef, SamplingParams
    from services.generation.registry import backend
    from services.judging.verifier import verify
    from services.judging.verifier_judge import refiner_judgment
    from services.judging.votes import verdict
    from services.methods.spar import REFINE_HEADROOM_TOKENS
    from services.refinement.search import SearchConfig, tree_search, tree_searches
    from services.refinement.tasks import model_calls

    if args.model == "gemma-chat":
        _ensure_chat_start()
    model = ModelRef(args.model)
    items = [it for it in read_jsonl(ROOT / "examples" / "curriculum_train.jsonl") if it["constraints"]]
    jobs: list = []
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=args.new_tokens, seed=0)
    t0 = time.monotonic()
    for start in range(0, len(items), 64):  # answers until enough of them fail
        chunk = items[start:start + 64]
        outs = backend().generate([[{"role": "user", "content": it["prompt"]}] for it in chunk], model, greedy)
        for it, comps in zip(chunk, outs):
            text = comps[0].text
            if verify(text, it["constraints"], it["prompt"]).strict:
                continue
            ok, why = refiner_judgment(text, it["constraints"], it["prompt"])
            jobs.append(({"messages": [{"role": "user", "content": it["prompt"]}], "constraints": it["constraints"]},
                         text, verdict([ok], [why])))
        if len(jobs) >= args.searches:
            break
    jobs = jobs[:args.searches]
    print(f"{len(jobs)} failed answers from the start in {time.monotonic() - t0:.0f} s", flush=True)

    config = SearchConfig(strategy="bfs", branching=args.branching, keep=1, max_depth=args.max_depth,
                          budget=args.branching * args.max_depth)
    refine_cfg = {"temperature": 0.7, "max_new_tokens": args.new_tokens + REFINE_HEADROOM_TOKENS}
    judge_cfg = {"judge": "hybrid", "votes": 1, "temperature": 0.7, "max_new_tokens": 160}

    def one_at_a_time():
        refine_many, judge_many, calls = model_calls(model, model, args.branching, refine_cfg, judge_cfg, seed=1)
        results = [tree_search(pr, text, root, config=config,
                               refine=lambda p, t, j: refine_many([(p, t, j)])[0],
                               judge=lambda p, texts: judge_many([(p, texts)])[0]) for pr, text, root in jobs]
        return results, calls["n"]

    def lockstep():
        refine_many, judge_many, calls = model_calls(model, model, args.branching, refine_cfg, judge_cfg, seed=1)
        return tree_searches(jobs, refine_many=refine_many, judge_many=judge_many, config=config), calls["n"]

    rates = {}
    for name, run in (("one at a time", one_at_a_time), ("lockstep", lockstep)):
        t1 = time.monotonic()
        results, n_calls = run()
        wall = time.monotonic() - t1
        rewrites = sum(r.refinements_used for r in results)
        rates[name] = rewrites / wall
        print(f"{name}: {wall:.1f} s, {n_calls} refiner calls, {rewrites} rewrites ({rates[name]:.2f}/s), "
              f"{sum(r.solution is not None for r in results)} of {len(results)} searches solved, "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
    print(f"ratio={rates['lockstep'] / rates['one at a time']:.2f}")


if __name__ == "__main__":
    main()
