"""A small fake text-generation-inference server for the `tgi` backend's tests: a real HTTP server
on a free local port (stdlib http.server in a thread) speaking the parts of TGI's documented API
that the backend uses.

- POST /generate (and the compat route POST /): {"inputs", "parameters"} -> {"generated_text",
  "details": {"finish_reason", "generated_tokens", "seed"}} when details is asked for. Text is
  made of words drawn from a generator seeded by (inputs, seed, adapter_id), so a seed reproduces
  a sample and different seeds / adapters differ. Greedy requests (do_sample false) ignore seed.
- Validation as TGI's router does it, answered 422 {"error": ..., "error_type": "validation"}.
- 429 {"error": "Model is overloaded", "error_type": "overloaded"} above `max_concurrent`
  requests in flight, or for the next k requests after `overload_next(k)`.
- GET /health, GET /info (model_id, limits, and the served adapters under `lora_adapters` when
  `report_adapters` is true; real TGI does not list them).
- stop() makes it refuse connections; restart(adapters, downtime) stops it and starts it again on
  the same port with a new adapter list, like a TGI relaunched with a new LORA_ADAPTERS.
  POST /_admin/restart with the adapter names (comma separated) does the same over HTTP.
"""
from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler

from fake_http import FakeHTTPServer

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega", ".", ",", "!"]


class FakeTGI(FakeHTTPServer):
    def __init__(self, *, adapters: list[str] | None = None, max_concurrent: int = 64, latency: float = 0.0,
                 report_adapters: bool = True, max_total_tokens: int = 1024, max_stop_sequences: int = 4,
                 model_id: str = "fake/tiny-gemma"):
        self.adapters = list(adapters or [])
        self.max_concurrent = max_concurrent
        self.latency = latency
        self.report_adapters = report_adapters
        self.max_total_tokens = max_total_tokens
        self.max_stop_sequences = max_stop_sequences
        self.model_id = model_id
        self.requests: list[dict] = []      # every generate request body that got a 200
        self.rejected = 0                   # 429s sent
        self.invalid = 0                    # 422s sent
        self.restarts = 0
        self._overload = 0
        self._inflight = 0
        self._lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------------------

    def handler_class(self) -> type:
        return _handler(self)

    def restart(self, adapters: list[str], downtime: float = 0.2) -> None:
        """Go down now, come back after `downtime` seconds serving `adapters` (returns at once)."""
        self.stop()
        self.restarts += 1

        def later() -> None:
            time.sleep(downtime)
            self.adapters = list(adapters)
            self.start()

        threading.Thread(target=later, daemon=True).start()

    def overload_next(self, k: int) -> None:
        with self._lock:
            self._overload += k

    # ---- behaviour ---------------------------------------------------------------------------

    def info(self) -> dict:
        info = {"model_id": self.model_id, "model_dtype": "torch.float32", "model_device_type": "cpu",
                "max_concurrent_requests": self.max_concurrent, "max_best_of": 2,
                "max_stop_sequences": self.max_stop_sequences, "max_input_tokens": self.max_total_tokens - 1,
                "max_total_tokens": self.max_total_tokens, "version": "fake-3.0"}
        if self.report_adapters:
            info["lora_adapters"] = list(self.adapters)
        return info

    def validate(self, inputs: str, p: dict) -> str | None:
        """TGI's router checks, in its wording where we know it; None when the request is fine."""
        if not isinstance(inputs, str) or not inputs:
            return "`inputs` must be a non-empty string"
        if p.get("temperature") is not None and p["temperature"] <= 0:
            return "`temperature` must be strictly positive"
        if p.get("top_p") is not None and not 0 < p["top_p"] < 1:
            return "`top_p` must be > 0.0 and < 1.0"
        if p.get("top_k") is not None and p["top_k"] <= 0:
            return "`top_k` must be strictly positive"
        if len(p.get("stop") or []) > self.max_stop_sequences:
            return f"`stop` supports up to {self.max_stop_sequences} stop sequences. Given: {len(p['stop'])}"
        best_of = p.get("best_of") or 1
        if best_of > 1 and p.get("seed") is not None:
            return "`seed` must not be set when `best_of` > 1"
        max_new = p.get("max_new_tokens", 100)
        if max_new is not None and max_new <= 0:
            return "`max_new_tokens` must be strictly positive"
        if len(inputs.split()) + (max_new or 0) > self.max_total_tokens:
            return (f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                    f"Given: {len(inputs.split())} `inputs` tokens and {max_new} `max_new_tokens`")
        adapter = p.get("adapter_id")
        if adapter is not None and adapter not in self.adapters and self.report_adapters:
            return f"adapter {adapter} not loaded"
        return None

    def complete(self, inputs: str, p: dict) -> dict:
        sample = bool(p.get("do_sample"))
        seed = p.get("seed") if p.get("seed") is not None else random.getrandbits(32)
        rng = random.Random(f"{inputs}|{seed if sample else 'greedy'}|{p.get('adapter_id')}")
        max_new = p.get("max_new_tokens", 100) or 100
        length = rng.randint(1, max_new + max_new // 2)  # sometimes longer than allowed
        words: list[str] = []
        finish = "length"
        for _ in range(min(length, max_new)):
            words.append(rng.choice(WORDS))
            text = " ".join(words)
            if any(s in text for s in p.get("stop") or []):
                finish = "stop_sequence"
                break
        else:
            if length < max_new:  # the model emitted EOS, which counts as a generated token
                finish = "eos_token"
        tokens = len(words) + (1 if finish == "eos_token" else 0)
        out = {"generated_text": " ".join(words)}
        if p.get("details"):
            out["details"] = {"finish_reason": finish, "generated_tokens": tokens,
                              "seed": seed if sample else None, "prefill": [], "tokens": []}
        return out


def _handler(fake: FakeTGI):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, code: int, body) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, None)
            elif self.path == "/info":
                self._send(200, fake.info())
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/_admin/restart":
                names = [x for x in body.decode().split(",") if x]
                self._send(200, {"restarting": names})
                threading.Thread(target=fake.restart, args=(names,), daemon=True).start()
                return
            if self.path not in ("/", "/generate"):
                self._send(404, {"error": f"no route {self.path}"})
                return
            try:
                request = json.loads(body)
            except json.JSONDecodeError as exc:
                self._send(422, {"error": f"invalid JSON: {exc}", "error_type": "validation"})
                return
            with fake._lock:
                overloaded = fake._overload > 0 or fake._inflight >= fake.max_concurrent
                if overloaded:
                    fake._overload = max(0, fake._overload - 1)
                    fake.rejected += 1
                else:
                    fake._inflight += 1
            if overloaded:
                self._send(429, {"error": "Model is overloaded", "error_type": "overloaded"})
                return
            try:
                params = request.get("parameters") or {}
                problem = fake.validate(request.get("inputs"), params)
                if problem:
                    with fake._lock:
                        fake.invalid += 1
                    self._send(422, {"error": f"Input validation error: {problem}", "error_type": "validation"})
                    return
                if fake.latency:
                    time.sleep(fake.latency)
                out = fake.complete(request["inputs"], params)
                with fake._lock:
                    fake.requests.append(request)
                self._send(200, out)
            finally:
                with fake._lock:
                    fake._inflight -= 1

    return Handler
