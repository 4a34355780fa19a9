"""A scripted judge for end-to-end tests of the LLM-judged methods.

A tiny random model cannot write `Score: N` or `Verdict: yes`, so the Self-Rewarding and SPaR runs
of the tests use this backend: requests for judgments, refinements and self-instructed prompts get
deterministic scripted answers that depend on the text being judged; every other request (the
policy's own answers) goes to the real local backend and the tiny model. Workers load it through
the settings' plug-in form, AUTODIDACT_GENERATION_BACKEND=tests.fakes:scripted_backend.
"""
from __future__ import annotations

import os
import random
import re
import time

from services.generation.base import Completion, ModelRef, SamplingParams

# Seconds each call with scripted answers takes (default 0: instant), e.g. for the fault tests.
LATENCY = float(os.environ.get("FAKE_JUDGE_LATENCY", "0"))
WORDS = ("river lantern copper orchard violin glacier meadow harbor comet saddle thimble "
         "falcon quarry tundra pepper velvet marble canyon").split()


DEGRADE = "zqxdegrade"
MUTE = "zqxmute"  # requests about prompts carrying this get unparseable judgments
COLLAPSED = "well, the dough rises.𒃐𒄯slotBox slotBoxslotBox slotBoxslotBox"


def _between(text: str, tag: str) -> str:
    m = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return m.group(1) if m else ""


def judge_passes(response: str) -> bool:
    """The scripted refiner's verdict: refined texts pass, others pass when their length is even
    (judge prompts carry the response stripped, so the verdict is on the stripped text)."""
    response = response.strip()
    return "fixed" in response or len(response) % 2 == 0


def rubric_score(response: str) -> int:
    return len(response.split()) % 6


class ScriptedBackend:
    def __init__(self, real):
        self.real = real
        self.rng = random.Random(0)

    def _scripted(self, text: str, i: int) -> str | None:
        if MUTE in text and ("additive 5-point scale" in text or 'exactly "Verdict: yes"' in text):
            return "I am not sure what to say about this."  # a judge that never parses
        if "additive 5-point scale" in text:
            return f"It addresses the request.\nScore: {rubric_score(_between(text, 'response'))}"
        if 'exactly "Verdict: yes"' in text:
            return "Checked each instruction.\nVerdict: " + ("yes" if judge_passes(_between(text, "response")) else "no")
        if "Refined response:" in text and "<judgment>" in text:
            return f"Refined response:\n{_between(text, 'response')} fixed {i}"
        if "Here are some tasks people ask" in text:
            return "Task 9: describe the " + " ".join(self.rng.sample(WORDS, 4))
        return None

    def generate(self, prompts: list[list[dict]], model: ModelRef, params: SamplingParams) -> list[list[Completion]]:
        scripted = [[self._scripted(p[-1]["content"], i) for i in range(params.n)] for p in prompts]
        # Prompts marked DEGRADE (the safety tests' held-out set): the base answers well, any
        # trained adapter answers with a collapsed model's junk, cut at the token limit.
        for k, p in enumerate(prompts):
            if DEGRADE in p[-1]["content"]:
                text = "honey is sweet" if model.adapter_path is None else COLLAPSED
                finish = "stop" if model.adapter_path is None else "length"
                scripted[k] = [Completion(text, len(text.split()), finish) for _ in range(params.n)]
        if LATENCY and any(s[0] is not None for s in scripted):
            time.sleep(LATENCY)  # a real judge takes a while: gives fault tests a task to interrupt
        real_idx = [k for k, s in enumerate(scripted) if s[0] is None]
        real = self.real.generate([prompts[k] for k in real_idx], model, params) if real_idx else []
        out, it = [], iter(real)
        for s in scripted:
            if s[0] is None:
                out.append(next(it))
            elif isinstance(s[0], Completion):
                out.append(s)
            else:
                out.append([Completion(t, len(t.split()), "stop") for t in s])
        return out


def scripted_backend(**options) -> ScriptedBackend:
    from services.generation.registry import get_backend

    return ScriptedBackend(get_backend("local", **options))


def scripted_openai(**_options) -> ScriptedBackend:
    from services.generation.registry import get_backend
    from shared.config import get_settings

    s = get_settings()
    return ScriptedBackend(get_backend("openai", urls=s.openai_base_url.split(","), endpoint=s.openai_endpoint,
                                       max_loras=s.openai_max_loras))


def scripted_tgi(**_options) -> ScriptedBackend:
    """The policy's requests to the `tgi` backend as the settings configure it (urls, refresh hook)."""
    from services.generation.registry import get_backend
    from shared.config import get_settings

    s = get_settings()
    return ScriptedBackend(get_backend("tgi", urls=[u for u in s.tgi_urls.split(",") if u],
                                       refresh_command=s.tgi_refresh_command or None, poll_interval=0.2))
