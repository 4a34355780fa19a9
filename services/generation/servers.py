"""What the HTTP backends (tgi, openai) share: a pool of servers with health-aware, least-busy
balancing and bounded concurrency, retries with exponential backoff on transient errors, the
policy-refresh hook, and running async code from the synchronous Backend.generate.

Errors are sorted into four kinds: `retry` (429, 503, 502, 504, overloaded, timeouts), `down`
(cannot connect: the server is skipped for a cool-down and the request goes elsewhere), `invalid`
(400 / 422: our request is wrong, raised at once as ValueError with the server's message) and
anything else, which propagates as it is.
"""
from __future__ import annotations

import asyncio
import logging
import random
import shlex
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from services.generation.base import TransientBackendError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS = {429, 502, 503, 504}
INVALID_STATUS = {400, 404, 422}


@dataclass
class RetryPolicy:
    retries: int = 5          # attempts after the first
    backoff: float = 0.5      # seconds before the first retry, doubled each time
    max_backoff: float = 16.0
    down_cooldown: float = 5.0  # how long a server that refused a connection is skipped

    def delay(self, attempt: int) -> float:
        # Full jitter halves the chance that many clients retry in lock-step.
        return min(self.max_backoff, self.backoff * 2 ** attempt) * (0.5 + random.random() / 2)


@dataclass
class Server:
    url: str
    capacity: int
    inflight: int = 0
    down_until: float = 0.0
    adapters: set[str] | None = None  # None: the server does not say which adapters it serves
    info: dict = field(default_factory=dict)
    sem: asyncio.Semaphore | None = None

    @property
    def available(self) -> bool:
        return time.monotonic() >= self.down_until


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind an exception (or its causes), if any."""
    seen = 0
    while exc is not None and seen < 5:
        response = getattr(exc, "response", None)
        code = getattr(response, "status_code", None)
        if isinstance(code, int):
            return code
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def classify(exc: BaseException) -> str:
    """'retry' | 'down' | 'invalid' | 'fatal' (see module docstring)."""
    name = type(exc).__name__
    if name == "OverloadedError":
        return "retry"
    if name == "ValidationError":
        return "invalid"
    code = status_of(exc)
    if code in RETRY_STATUS:
        return "retry"
    if code in INVALID_STATUS:
        return "invalid"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in name:
        return "retry"
    if isinstance(exc, ConnectionError) or name in {"ConnectError", "RemoteProtocolError", "ReadError",
                                                      "WriteError", "NetworkError", "CloseError"}:
        return "down"
    return "fatal"


def error_text(exc: BaseException) -> str:
    response = None
    e: BaseException | None = exc
    while e is not None and response is None:
        response, e = getattr(e, "response", None), e.__cause__
    body = ""
    try:
        body = response.text if response is not None else ""
    except Exception:  # noqa: BLE001 - a streamed or closed response has no text to show
        body = ""
    return f"{exc}" + (f" | server said: {body[:500]}" if body and body not in str(exc) else "")


class ServerPool:
    """Servers of one backend. `probe(server) -> bool` checks health and fills `server.info` /
    `server.adapters`; it runs at the start of every call and when all servers look down."""

    def __init__(self, urls: list[str], capacity: int, probe: Callable[[Server], Awaitable[bool]],
                 policy: RetryPolicy):
        if not urls:
            raise ValueError("no server URLs given; pass urls=['http://host:port', ...]")
        self.servers = [Server(url=u.rstrip("/"), capacity=capacity) for u in urls]
        self.probe = probe
        self.policy = policy

    async def refresh_health(self, only_down: bool = False) -> None:
        async def one(server: Server) -> None:
            try:
                ok = await self.probe(server)
            except Exception as exc:  # noqa: BLE001 - a probe that fails in any way means "not now"
                log.debug("probe of %s failed: %s", server.url, exc)
                ok = False
            server.down_until = 0.0 if ok else time.monotonic() + self.policy.down_cooldown
            if not ok:
                log.warning("generation server %s is unhealthy; skipping it for %.0f s",
                            server.url, self.policy.down_cooldown)

        await asyncio.gather(*(one(s) for s in self.servers
                               if not only_down or not s.available))

    def start(self) -> None:
        """Create the per-server semaphores inside the running loop."""
        for s in self.servers:
            s.sem = asyncio.Semaphore(s.capacity)
            s.inflight = 0

    def pick(self, eligible: Callable[[Server], bool] | None = None) -> Server | None:
        """The least-busy available server (relative to its capacity) that passes `eligible`."""
        candidates = [s for s in self.servers if s.available and (eligible is None or eligible(s))]
        if not candidates:
            return None
        return min(candidates, key=lambda s: (s.inflight / s.capacity, s.inflight))

    async def call(self, request: Callable[[Server], Coroutine[Any, Any, T]],
                   eligible: Callable[[Server], bool] | None = None, what: str = "request") -> T:
        """Run `request` on a server, retrying transient failures on the same or other servers."""
        last: BaseException | None = None
        for attempt in range(self.policy.retries + 1):
            server = self.pick(eligible)
            if server is None:
                await asyncio.sleep(self.policy.delay(attempt))
                await self.refresh_health(only_down=True)
                last = last or ConnectionError("no healthy server")
                continue
            server.inflight += 1  # counted while waiting too, so the next pick sees the queue
            try:
                assert server.sem is not None, "ServerPool.start() was not called"
                async with server.sem:
                    return await request(server)
            except Exception as exc:
                kind = classify(exc)
                if kind == "invalid":
                    raise ValueError(f"{what} rejected by {server.url}: {error_text(exc)}") from exc
                if kind == "fatal":
                    raise
                if kind == "down":
                    server.down_until = time.monotonic() + self.policy.down_cooldown
                log.info("%s on %s failed (%s: %s); retry %d/%d", what, server.url, kind, exc,
                         attempt + 1, self.policy.retries)
                last = exc
            finally:
                server.inflight -= 1
            if attempt < self.policy.retries:
                await asyncio.sleep(self.policy.delay(attempt))
        raise TransientBackendError(
            f"{what} failed after {self.policy.retries + 1} attempts on {[s.url for s in self.servers]}: "
            f"{last}") from last


def run_sync(make_coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop
    (then in a helper thread with its own loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


RefreshHook = Callable[[str, str], None] | str


def call_refresh_hook(hook: RefreshHook, adapter_path: str, adapter_id: str, timeout: float) -> None:
    """Ask the deployment to serve an adapter: a Python callable (adapter_path, adapter_id), or a
    shell command template with {adapter_path} and {adapter_id} (e.g. a script that restarts TGI
    with LORA_ADAPTERS extended)."""
    if callable(hook):
        hook(adapter_path, adapter_id)
        return
    command = hook.format(adapter_path=shlex.quote(adapter_path), adapter_id=shlex.quote(adapter_id))
    log.info("policy refresh: %s", command)
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise ValueError(f"refresh command {command!r} exited with {done.returncode}: "
                         f"{(done.stderr or done.stdout).strip()[-500:]}")
