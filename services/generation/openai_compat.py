"""The `openai` backend: any OpenAI-compatible server, written against vLLM's.

- `endpoint="completions"` (default): POST /v1/completions with `n`, the prompt rendered with the
  base model's chat template and sent as token ids, so no server-side BOS is added twice and the
  server sees exactly what the trainer sees. `endpoint="chat"`: POST /v1/chat/completions with the
  messages, templated by the server (use it when the server's template is the one you want).
- The OpenAI API reports tokens per response only in total; with n > 1 a response's token count
  is its text re-tokenized locally (+1 for the end-of-turn token when it stopped on it), exact
  for n = 1 (usage.completion_tokens).
- Retries, balancing and health probing as in the tgi backend (services/generation/servers.py).

Policy refresh: vLLM loads LoRA adapters at run time (server started with
VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora). If GET /v1/models does not list the
adapter, we POST /v1/load_lora_adapter {lora_name, lora_path} to each server lacking it (the path
must be readable by the server: a shared volume), then sample with model=<adapter name>. A custom
`refresh_command` (as for tgi) replaces the API call for servers that cannot load at run time.
Versions no longer needed are unloaded (POST /v1/unload_lora_adapter): with `max_loras` > 0, a
server holding more run-time adapters than that drops the ones this backend used least recently
(adapters it never used first), never the one being sampled. Another worker may still want an
evicted adapter: a request answered "model does not exist" (404) loads it again and retries.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
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
    status_of,
)
from shared.modeling import as_messages, end_of_turn_ids, load_tokenizer, prompt_ids

log = logging.getLogger(__name__)


def openai_parameters(params: SamplingParams) -> dict[str, Any]:
    body: dict[str, Any] = {"n": params.n, "max_tokens": params.max_new_tokens,
                            "temperature": params.temperature, "top_p": params.top_p}
    if params.top_k:
        body["top_k"] = params.top_k  # a vLLM extension
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    return body


class OpenAIBackend:
    """`base_url` or `urls`: server roots (http://host:port, without /v1). `model_name`: the served
    name of the base model (default: the first base model /v1/models lists). `tokenizer`: base
    model name or directory for the chat template (default: the ModelRef's base model)."""

    def __init__(self, base_url: str | None = None, *, urls: list[str] | None = None,
                 endpoint: str = "completions", model_name: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 16, timeout: float = 300.0, refresh_command: RefreshHook | None = None,
                 refresh_timeout: float = 600.0, poll_interval: float = 2.0, tokenizer: str | None = None,
                 retry: RetryPolicy | None = None, max_loras: int = 0):
        if endpoint not in ("completions", "chat"):
            raise ValueError(f"endpoint must be 'completions' or 'chat', got {endpoint!r}")
        self.urls = list(urls or []) + ([base_url] if base_url else [])
        self.urls = [u.rstrip("/").removesuffix("/v1") for u in self.urls]
        self.endpoint = endpoint
        self.model_name = model_name
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.refresh_command = refresh_command
        self.refresh_timeout = refresh_timeout
        self.poll_interval = poll_interval
        self.tokenizer = tokenizer
        self.retry = retry or RetryPolicy()
        if not isinstance(max_loras, int) or max_loras < 0:
            raise ValueError(f"max_loras must be an integer >= 0 (0 = never unload), got {max_loras!r}")
        self.max_loras = max_loras
        self._recent: OrderedDict[str, None] = OrderedDict()  # adapters this backend sampled, oldest first
        self._call_lock = threading.Lock()  # one generate at a time: the pool's state is per call
        self._pool = ServerPool(self.urls, max_concurrency, self._probe, self.retry)
        self._http = None

    def generate(self, prompts: list[list[dict]], model: ModelRef,
                 params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        tok = load_tokenizer(self.tokenizer or model.base_model)
        messages = [as_messages(p) for p in prompts]
        with self._call_lock:
            return run_sync(lambda: self._generate(tok, messages, model, params))

    # ---- internals ---------------------------------------------------------------------------

    async def _get(self, url: str) -> Any:
        response = await self._http.get(url, headers=self.headers)
        response.raise_for_status()
        return response.json()

    async def _post(self, url: str, body: dict) -> Any:
        response = await self._http.post(url, json=body, headers=self.headers)
        response.raise_for_status()
        return response.json() if "json" in response.headers.get("content-type", "") else response.text

    async def _probe(self, server: Server) -> bool:
        response = await self._http.get(f"{server.url}/health", headers=self.headers)
        if response.status_code != 200:
            return False
        models = (await self._get(f"{server.url}/v1/models")).get("data", [])
        server.info = {"models": models}
        server.adapters = {m["id"] for m in models if m.get("parent")}
        return True

    def _base_name(self) -> str:
        if self.model_name:
            return self.model_name
        for server in self._pool.servers:
            for m in server.info.get("models", []):
                if not m.get("parent"):
                    return m["id"]
        raise TransientBackendError(f"no base model listed by /v1/models on {self.urls}; are the servers up?")

    async def _generate(self, tok, messages: list[list[dict]], model: ModelRef,
                        params: SamplingParams) -> list[list[Completion]]:
        import httpx

        async with httpx.AsyncClient(timeout=self.timeout) as http:
            self._http = http
            self._pool.start()
            await self._pool.refresh_health()
            adapter = model.adapter_name
            if adapter is not None:
                await self._ensure_adapter(adapter, str(model.adapter_path))
                self._recent[adapter] = None
                self._recent.move_to_end(adapter)
                await self._evict(keep=adapter)
            served = adapter or self._base_name()
            body = openai_parameters(params)
            eot = end_of_turn_ids(tok)

            async def one(chat: list[dict]) -> list[Completion]:
                if self.endpoint == "chat":
                    path, payload = "/v1/chat/completions", dict(body, model=served, messages=chat)
                else:
                    path, payload = "/v1/completions", dict(body, model=served, prompt=prompt_ids(tok, chat))

                async def request(server: Server):
                    return await self._post(server.url + path, payload)

                for attempt in range(3):
                    try:
                        out = await self._pool.call(request, lambda s: adapter is None or adapter in (s.adapters or ()),
                                                    what=f"POST {path}")
                        return _completions(out, params, tok, eot)
                    except ValueError as exc:  # unloaded meanwhile (another worker's eviction): load again
                        if adapter is None or status_of(exc) != 404 or attempt == 2:
                            raise
                        log.info("adapter %s was unloaded meanwhile; loading it again", adapter)
                        await self._pool.refresh_health()
                        await self._ensure_adapter(adapter, str(model.adapter_path))
                raise AssertionError("unreachable")

            try:
                return list(await asyncio.gather(*(one(m) for m in messages)))
            finally:
                self._http = None

    async def _ensure_adapter(self, adapter: str, path: str) -> None:
        missing = [s for s in self._pool.servers if s.available and adapter not in (s.adapters or ())]
        if not missing:
            return
        if self.refresh_command is not None:
            await asyncio.to_thread(call_refresh_hook, self.refresh_command, path, adapter, self.refresh_timeout)
        else:
            async def load(server: Server):
                log.info("loading adapter %s from %s on %s", adapter, path, server.url)
                try:
                    return await self._post(f"{server.url}/v1/load_lora_adapter",
                                            {"lora_name": adapter, "lora_path": path})
                except Exception as exc:  # loaded meanwhile by another worker: fine
                    if "already" in str(getattr(getattr(exc, "response", None), "text", "")):
                        return None
                    raise

            for target in missing:
                await self._pool.call(load, lambda s, target=target: s is target,
                                      what="POST /v1/load_lora_adapter (the server needs "
                                           "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora)")
        deadline = time.monotonic() + self.refresh_timeout
        while True:
            await self._pool.refresh_health()
            up = [s for s in self._pool.servers if s.available]
            ready = [s for s in up if adapter in (s.adapters or ())]
            if ready and len(ready) == len(up):
                return
            if time.monotonic() > deadline:
                if ready:
                    return
                raise TransientBackendError(f"adapter {adapter!r} not listed by /v1/models on {self.urls} "
                                            f"{self.refresh_timeout:.0f} s after loading it")
            await asyncio.sleep(self.poll_interval)

    async def _evict(self, keep: str) -> None:
        if not self.max_loras:
            return
        for server in [s for s in self._pool.servers if s.available]:
            resident = set(server.adapters or ())
            excess = len(resident) - self.max_loras
            if excess <= 0:
                continue
            order = [a for a in sorted(resident) if a not in self._recent] + [a for a in self._recent if a in resident]
            for name in [a for a in order if a != keep][:excess]:
                log.info("unloading adapter %s from %s (more than max_loras=%d resident)", name, server.url,
                         self.max_loras)
                try:
                    await self._post(f"{server.url}/v1/unload_lora_adapter", {"lora_name": name})
                except Exception as exc:  # already gone (another worker unloaded it): fine
                    if status_of(exc) not in (400, 404):
                        log.warning("unloading adapter %s from %s failed: %s", name, server.url, exc)
                        continue
                server.adapters = (server.adapters or set()) - {name}
                self._recent.pop(name, None)


def _completions(out: dict, params: SamplingParams, tok, eot: list[int]) -> list[Completion]:
    choices = sorted(out.get("choices", []), key=lambda c: c.get("index", 0))
    usage = out.get("usage") or {}
    result = []
    for choice in choices:
        raw = choice["message"]["content"] if "message" in choice else choice.get("text", "")
        text, cut = cut_at_stop(raw or "", params.stop)
        reason = FINISH_AT_LIMIT if choice.get("finish_reason") == "length" else "stop"  # OpenAI's word for it
        if len(choices) == 1 and usage.get("completion_tokens") is not None:
            tokens = int(usage["completion_tokens"])
        else:  # per-response counts are not in the API: re-tokenize (+ the end-of-turn token)
            by_eos = reason == "stop" and choice.get("stop_reason") is None and not cut
            tokens = len(tok(raw or "", add_special_tokens=False)["input_ids"]) + (1 if by_eos and eot else 0)
        result.append(Completion(text=text, token_count=tokens, finish_reason="stop" if cut else reason))
    if len(result) != params.n:
        raise ValueError(f"server returned {len(result)} choices for n={params.n}; it may not support n "
                         "(use an OpenAI-compatible server that does, such as vLLM)")
    return result
