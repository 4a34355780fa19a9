"""The `tgi` backend: sampling from text-generation-inference servers through huggingface_hub's
AsyncInferenceClient.text_generation (details=True, seed, adapter_id).

- TGI has no `n`: the n samples of a prompt are n requests with seeds seed, seed+1, ... (greedy
  decoding is deterministic, so then one request is made and copied n times).
- Prompts are rendered here with the base model's chat template (shared.modeling.render_prompt),
  so the server sees exactly the text the local backend and the trainer see.
- TGI's parameter rules are checked before anything is sent (`check_tgi_parameters`), so a bad
  configuration fails at once with a ValueError instead of n x prompts HTTP 422s. Note TGI samples
  only with do_sample=true (temperature alone is not enough), and rejects top_p=1.0.
- Load is spread over the servers least-busy first, at most `max_concurrency` requests in flight
  per server; 429 / 503 / timeouts are retried with exponential backoff, a server that refuses
  connections is skipped for a while (services/generation/servers.py).

Policy refresh. TGI loads LoRA adapters only at start-up (LORA_ADAPTERS=name=path,...), and it
neither lists them in /info nor rejects an unknown adapter_id (it silently uses the base model).
So before sampling from an adapter we must know it is served: from /info when the deployment
reports `lora_adapters` there (our fake server and wrappers may), otherwise from the adapters this
backend has refreshed itself or was told are preloaded. If it is not known to be served, the
refresh hook runs: a callable (adapter_path, adapter_id) or a shell command template with
{adapter_path} and {adapter_id}; it must be idempotent (several workers may call it) and is
expected to restart TGI with the adapter added. We then poll /health (and /info) until every
server is back and, where /info tells, serves the adapter, or `refresh_timeout` passes.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any

from services.generation.base import (
    FINISH_AT_LIMIT,
    Completion,
    ModelRef,
    SamplingParams,
    TransientBackendError,
    cut_at_stop,
)
from services.generation.servers import (
    RefreshHook,
    RetryPolicy,
    Server,
    ServerPool,
    call_refresh_hook,
    run_sync,
)
from shared.modeling import as_messages, load_tokenizer, render_prompt

log = logging.getLogger(__name__)

_FINISH = {"length": FINISH_AT_LIMIT, "eos_token": "stop", "stop_sequence": "stop"}


def tgi_parameters(params: SamplingParams) -> dict[str, Any]:
    """Our sampling parameters in TGI's terms (without seed and adapter, set per request)."""
    out: dict[str, Any] = {"max_new_tokens": params.max_new_tokens, "stop": list(params.stop) or None}
    if params.temperature == 0:
        out["do_sample"] = False
        return out
    out.update(do_sample=True, temperature=params.temperature,
               top_p=params.top_p if params.top_p < 1.0 else None,  # TGI wants top_p < 1: 1.0 = off
               top_k=params.top_k or None)
    return out


def check_tgi_parameters(p: dict[str, Any], max_stop_sequences: int = 4, max_best_of: int = 2) -> None:
    """Raise ValueError for anything TGI's router would reject with a 422."""
    if p.get("temperature") is not None and not p["temperature"] > 0:
        raise ValueError(f"TGI needs temperature > 0, got {p['temperature']}; use temperature=0 in "
                         "SamplingParams for greedy decoding (sent as do_sample=false)")
    if p.get("top_p") is not None and not 0 < p["top_p"] < 1:
        raise ValueError(f"TGI needs top_p strictly inside (0, 1), got {p['top_p']}; omit it (or use "
                         "1.0 in SamplingParams) to switch nucleus sampling off")
    if p.get("top_k") is not None and not p["top_k"] > 0:
        raise ValueError(f"TGI needs top_k > 0, got {p['top_k']}; use 0 in SamplingParams for no top-k")
    if len(p.get("stop") or []) > max_stop_sequences:
        raise ValueError(f"TGI accepts at most {max_stop_sequences} stop sequences, got "
                         f"{len(p['stop'])}: {p['stop']}; drop some or raise --max-stop-sequences")
    if p.get("max_new_tokens") is not None and not p["max_new_tokens"] > 0:
        raise ValueError(f"TGI needs max_new_tokens > 0, got {p['max_new_tokens']}")
    best_of = p.get("best_of") or 1
    if best_of > 1:
        if best_of > max_best_of:
            raise ValueError(f"TGI's best_of is at most {max_best_of}, got {best_of}")
        if p.get("seed") is not None:
            raise ValueError("TGI rejects a seed together with best_of > 1; drop one of them")
        if not p.get("do_sample"):
            raise ValueError("TGI needs do_sample=true with best_of > 1")


def info_adapters(info: dict) -> set[str] | None:
    """Adapter names a server reports in /info, or None when it does not say (plain TGI)."""
    listed = info.get("lora_adapters", info.get("adapters"))
    if listed is None:
        return None
    if isinstance(listed, str):
        listed = [x for x in listed.split(",") if x]
    return {(a.get("id") or a.get("name")) if isinstance(a, dict) else str(a).split("=")[0] for a in listed}


class TGIBackend:
    """`urls`: TGI servers (http://host:port). `refresh_command`: the policy-refresh hook (see the
    module docstring). `preloaded_adapters`: adapter names known to be in LORA_ADAPTERS already.
    `tokenizer`: base model name or directory whose chat template renders prompts (default: the
    ModelRef's base model)."""

    def __init__(self, urls: list[str] | str, *, max_concurrency: int = 16, timeout: float = 300.0,
                 refresh_command: RefreshHook | None = None, refresh_timeout: float = 900.0,
                 poll_interval: float = 2.0, preloaded_adapters: list[str] | None = None,
                 tokenizer: str | None = None, retry: RetryPolicy | None = None,
                 max_stop_sequences: int = 4):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.refresh_command = refresh_command
        self.refresh_timeout = refresh_timeout
        self.poll_interval = poll_interval
        self.known_adapters: set[str] = set(preloaded_adapters or [])
        self.tokenizer = tokenizer
        self.retry = retry or RetryPolicy()
        self.max_stop_sequences = max_stop_sequences
        self._call_lock = threading.Lock()  # one generate at a time: the pool's state is per call
        self._pool = ServerPool(self.urls, max_concurrency, self._probe, self.retry)  # validates urls
        self._clients: dict[str, Any] = {}

    # ---- public ------------------------------------------------------------------------------

    def generate(self, prompts: list[list[dict]], model: ModelRef,
                 params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        base = tgi_parameters(params)
        check_tgi_parameters(base, self.max_stop_sequences)
        tok = load_tokenizer(self.tokenizer or model.base_model)
        texts = [render_prompt(tok, as_messages(p)) for p in prompts]
        with self._call_lock:
            return run_sync(lambda: self._generate(texts, model, params, base))

    # ---- internals ---------------------------------------------------------------------------

    def _client(self, url: str):
        from huggingface_hub import AsyncInferenceClient

        if url not in self._clients:
            # provider="hf-inference" is what lets health_check / get_endpoint_info talk to a URL.
            self._clients[url] = AsyncInferenceClient(model=url, provider="hf-inference", timeout=self.timeout)
        return self._clients[url]

    async def _probe(self, server: Server) -> bool:
        client = self._client(server.url)
        if not await client.health_check():
            return False
        server.info = await client.get_endpoint_info()
        server.adapters = info_adapters(server.info)
        return True

    def _serves(self, adapter: str | None):
        def eligible(server: Server) -> bool:
            if adapter is None:
                return True
            return adapter in (server.adapters if server.adapters is not None else self.known_adapters)
        return eligible

    async def _generate(self, texts: list[str], model: ModelRef, params: SamplingParams,
                        base: dict[str, Any]) -> list[list[Completion]]:
        self._clients = {}  # the clients' HTTP sessions belong to this event loop
        self._pool.start()
        try:
            await self._pool.refresh_health()
            adapter = model.adapter_name
            if adapter is not None:
                await self._ensure_adapter(adapter, str(model.adapter_path))
            eligible = self._serves(adapter)
            seed0 = params.seed if params.seed is not None else random.getrandbits(31)
            draws = 1 if params.temperature == 0 else params.n

            async def one(text: str, j: int) -> Completion:
                kwargs = dict(base, adapter_id=adapter)
                if params.temperature > 0:
                    kwargs["seed"] = seed0 + j

                async def request(server: Server):
                    return await self._client(server.url).text_generation(text, details=True, **kwargs)

                out = await self._pool.call(request, eligible, what="TGI generate")
                return _completion(out, params.stop)

            done = await asyncio.gather(*(one(t, j) for t in texts for j in range(draws)))
            per_prompt = [done[i * draws:(i + 1) * draws] for i in range(len(texts))]
            return [row * params.n if draws == 1 else row for row in per_prompt]
        finally:
            for client in self._clients.values():
                await client.close()
            self._clients = {}

    async def _ensure_adapter(self, adapter: str, path: str) -> None:
        up = [s for s in self._pool.servers if s.available]
        if up and all(self._serves(adapter)(s) for s in up):
            return
        if self.refresh_command is None:
            raise ValueError(
                f"adapter {adapter!r} ({path}) is not served by the TGI servers {self.urls} and no "
                "refresh_command is configured; start TGI with LORA_ADAPTERS including "
                f"{adapter}={path}, or pass preloaded_adapters=[{adapter!r}] or a refresh_command")
        log.info("policy refresh: asking the deployment to serve adapter %s from %s", adapter, path)
        await asyncio.to_thread(call_refresh_hook, self.refresh_command, path, adapter, self.refresh_timeout)
        deadline = time.monotonic() + self.refresh_timeout
        while True:
            await asyncio.sleep(self.poll_interval)
            await self._pool.refresh_health()
            up = [s for s in self._pool.servers if s.available]
            # Servers that cannot list adapters count as serving it once they answer again.
            ready = [s for s in up if s.adapters is None or adapter in s.adapters]
            if len(ready) == len(self._pool.servers):
                break
            if time.monotonic() > deadline:
                if ready:
                    log.warning("adapter %s served by %d of %d servers after %.0f s; using those",
                                adapter, len(ready), len(self._pool.servers), self.refresh_timeout)
                    break
                raise TransientBackendError(
                    f"adapter {adapter!r} not served by any of {self.urls} {self.refresh_timeout:.0f} s "
                    "after the refresh hook ran; check the refresh command and the servers' logs")
        self.known_adapters.add(adapter)


def _completion(out, stop: list[str]) -> Completion:
    details = out.details
    text, cut = cut_at_stop(out.generated_text, stop)  # TGI keeps the stop sequence in the text
    reason = _FINISH.get(str(details.finish_reason), "stop") if details else "stop"
    tokens = details.generated_tokens if details else 0
    return Completion(text=text, token_count=tokens, finish_reason="stop" if cut else reason)
