"""Pick a generation backend by name: "local" (transformers in-process), "tgi" (text-generation-
inference servers) or "openai" (OpenAI-compatible servers such as vLLM).

Options go to the backend's constructor, e.g.
    get_backend("local", device="cpu", memory_mb=2048)
    get_backend("tgi", urls=["http://tgi-0:80", "http://tgi-1:80"], refresh_command="infra/tgi-refresh {adapter_id} {adapter_path}")
    get_backend("openai", base_url="http://vllm:8000", endpoint="completions")
Backends are cached per option set, so repeated tasks in one worker share loaded adapters and
what they learned about servers (unless an option is a callable).
"""
from __future__ import annotations

import importlib
import inspect
import json
import threading
from functools import lru_cache

from services.generation.base import Backend

_cache: dict[str, Backend] = {}
_lock = threading.Lock()


def _classes() -> dict[str, type]:
    from services.generation.local import LocalBackend
    from services.generation.openai_compat import OpenAIBackend
    from services.generation.tgi import TGIBackend

    return {"local": LocalBackend, "tgi": TGIBackend, "openai": OpenAIBackend}


def get_backend(name: str, **options) -> Backend:
    classes = _classes()
    if name not in classes:
        raise ValueError(f"unknown generation backend {name!r}; choose one of {sorted(classes)}")
    cls = classes[name]
    if name == "tgi" and "urls" not in options and "url" in options:
        options["urls"] = [options.pop("url")]
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        raise ValueError(f"backend {name!r} does not take option(s) {unknown}; it takes "
                         f"{sorted(k for k in accepted if k != 'self')}")
    # Callables (refresh hooks) make a key unhashable as JSON; such backends are not cached.
    try:
        key = name + json.dumps(options, sort_keys=True, default=str)
        cacheable = not any(callable(v) for v in options.values())
    except TypeError:
        key, cacheable = "", False
    with _lock:
        if cacheable and key in _cache:
            return _cache[key]
        backend = cls(**options)
        if cacheable:
            _cache[key] = backend
        return backend


@lru_cache
def backend() -> Backend:
    """This process's backend, built once from the settings (`generation_backend` and its options)."""
    from shared.config import get_settings

    s = get_settings()
    if ":" in s.generation_backend:  # a plug-in: "package.module:factory", called with device=...
        module, attr = s.generation_backend.split(":", 1)
        return getattr(importlib.import_module(module), attr)(device=s.device)
    if s.generation_backend == "tgi":
        return get_backend("tgi", urls=[u for u in s.tgi_urls.split(",") if u],
                           refresh_command=s.tgi_refresh_command or None,
                           preloaded_adapters=[a for a in s.tgi_preloaded_adapters.split(",") if a] or None)
    if s.generation_backend == "openai":
        return get_backend("openai", urls=[u for u in s.openai_base_url.split(",") if u],
                           endpoint=s.openai_endpoint, max_loras=s.openai_max_loras)
    return get_backend("local", device=s.device, memory_mb=s.generation_memory_mb, greedy_head=s.greedy_head,
                       dtype=s.generation_dtype)
