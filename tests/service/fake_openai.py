"""A small fake OpenAI-compatible (vLLM-like) server for the `openai` backend's tests: a real HTTP
server on a free local port (stdlib http.server in a thread).

- POST /v1/completions (prompt: text or token ids, n, max_tokens, temperature, top_p, top_k,
  stop, seed) and POST /v1/chat/completions (messages): n choices of words drawn from a generator
  seeded by (prompt, seed, model, choice index); stop strings are left out of the text, as vLLM
  does, and named in `stop_reason`; usage.completion_tokens totals all choices.
- GET /v1/models: the base model (parent null) and each loaded LoRA adapter (parent = base).
- POST /v1/load_lora_adapter {lora_name, lora_path}: 200 text on success, 400 when already loaded,
  404 when run-time loading is off (vLLM registers the route only with
  VLLM_ALLOW_RUNTIME_LORA_UPDATING=True). POST /v1/unload_lora_adapter {lora_name}: 200 text,
  404 when no such adapter is loaded.
- Errors in vLLM's shape {"object": "error", "message", "type", "code"}; unknown model 404;
  429 for the next k requests after overload_next(k). stop() refuses connections.

`ModelOpenAI` is the same server backed by a real model (the tests' tiny one): completions are
sampled with the `local` backend from the base model or the PEFT adapter a request names, adapters
are loaded from and unloaded by their directories at run time as vLLM does, and `served` records
which model (base or adapter name, with its directory) answered each request.
"""
from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler

from fake_http import FakeHTTPServer

WORDS = ["red", "green", "blue", "cyan", "magenta", "yellow", "black", "white", "grey", "pink", ".", ","]


class FakeOpenAI(FakeHTTPServer):
    def __init__(self, *, model_id: str = "tiny-base", adapters: dict[str, str] | None = None,
                 runtime_lora: bool = True):
        self.model_id = model_id
        self.adapters = dict(adapters or {})
        self.runtime_lora = runtime_lora
        self.requests: list[tuple[str, dict]] = []   # (path, body) of every POST served with 200
        self.rejected = 0
        self._overload = 0
        self._lock = threading.Lock()

    def handler_class(self) -> type:
        return _handler(self)

    def overload_next(self, k: int) -> None:
        with self._lock:
            self._overload += k

    def posts(self, path: str) -> list[dict]:
        return [body for p, body in self.requests if p == path]

    def models(self) -> dict:
        data = [{"id": self.model_id, "object": "model", "root": self.model_id, "parent": None}]
        data += [{"id": name, "object": "model", "root": path, "parent": self.model_id}
                 for name, path in self.adapters.items()]
        return {"object": "list", "data": data}

    def complete(self, prompt, body: dict) -> list[dict]:
        prompt_key = json.dumps(prompt)
        n, max_tokens = body.get("n", 1), body.get("max_tokens", 16)
        choices = []
        for i in range(n):
            seed = body.get("seed") if body.get("seed") is not None else random.getrandbits(32)
            rng = random.Random(f"{prompt_key}|{seed}|{body['model']}|{i}")
            length = rng.randint(1, max_tokens + max_tokens // 2)
            words, finish, stop_reason = [], "length", None
            for _ in range(min(length, max_tokens)):
                words.append(rng.choice(WORDS))
                text = " ".join(words)
                hit = next((s for s in body.get("stop") or [] if s in text), None)
                if hit is not None:
                    finish, stop_reason = "stop", hit
                    text = text[:text.find(hit)]
                    break
            else:
                text = " ".join(words)
                if length < max_tokens:
                    finish = "stop"  # EOS
            choices.append({"index": i, "text": text, "finish_reason": finish, "stop_reason": stop_reason,
                            "tokens": len(words) + (1 if finish == "stop" and stop_reason is None else 0)})
        return choices


def _error(code: int, message: str, kind: str) -> dict:
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


def _handler(fake: FakeOpenAI):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, code: int, body, text: bool = False) -> None:
            data = (body if text else json.dumps(body)).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, "", text=True)
            elif self.path == "/v1/models":
                self._send(200, fake.models())
            else:
                self._send(404, _error(404, f"no route {self.path}", "NotFoundError"))

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            with fake._lock:
                if fake._overload > 0:
                    fake._overload -= 1
                    fake.rejected += 1
                    self._send(429, _error(429, "too many requests", "RateLimitError"))
                    return
            if self.path == "/v1/load_lora_adapter":
                if not fake.runtime_lora:
                    self._send(404, {"detail": "Not Found"})
                    return
                name = body.get("lora_name")
                if name in fake.adapters:
                    self._send(400, _error(400, f"The lora adapter '{name}' has already been loaded.",
                                           "InvalidUserInput"))
                    return
                fake.adapters[name] = body.get("lora_path")
                fake.requests.append((self.path, body))
                self._send(200, f"Success: LoRA adapter '{name}' added successfully.", text=True)
                return
            if self.path == "/v1/unload_lora_adapter":
                name = body.get("lora_name")
                if not fake.runtime_lora or name not in fake.adapters:
                    self._send(404, _error(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError"))
                    return
                del fake.adapters[name]
                fake.requests.append((self.path, body))
                self._send(200, f"Success: LoRA adapter '{name}' removed successfully.", text=True)
                return
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(404, _error(404, f"no route {self.path}", "NotFoundError"))
                return
            if body.get("model") not in (fake.model_id, *fake.adapters):
                self._send(404, _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError"))
                return
            if not 0 < body.get("top_p", 1.0) <= 1 or body.get("temperature", 1.0) < 0 or body.get("n", 1) < 1:
                self._send(400, _error(400, "invalid sampling parameters", "BadRequestError"))
                return
            chat = self.path.endswith("chat/completions")
            try:
                choices = fake.complete(body["messages"] if chat else body["prompt"], body)
            except ValueError as exc:
                self._send(400, _error(400, str(exc), "BadRequestError"))
                return
            used = sum(c.pop("tokens") for c in choices)
            if chat:
                choices = [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                            "finish_reason": c["finish_reason"], "stop_reason": c["stop_reason"]} for c in choices]
            fake.requests.append((self.path, body))
            self._send(200, {"id": "cmpl-fake", "object": "chat.completion" if chat else "text_completion",
                             "model": body["model"], "choices": choices,
                             "usage": {"prompt_tokens": 0, "completion_tokens": used, "total_tokens": used}})

    return Handler


class ModelOpenAI(FakeOpenAI):
    """The server above, generating with a real model directory (see the module docstring)."""

    def __init__(self, base_model: str, **kwargs):
        super().__init__(**kwargs)
        from services.generation.local import LocalBackend

        self.base_model = base_model
        self.local = LocalBackend(device="cpu")
        self.served: list[tuple[str, str | None]] = []  # (model name, adapter dir or None) per request
        self._generate_lock = threading.Lock()

    def complete(self, prompt, body: dict) -> list[dict]:
        from services.generation.base import ModelRef, SamplingParams

        name = body["model"]
        path = self.adapters.get(name) if name != self.model_id else None
        params = SamplingParams(n=body.get("n", 1), temperature=body.get("temperature", 1.0),
                                top_p=body.get("top_p", 1.0), top_k=body.get("top_k", 0),
                                max_new_tokens=body.get("max_tokens", 16), stop=body.get("stop") or [],
                                seed=body.get("seed"))
        ref = ModelRef(self.base_model, adapter_path=path)
        with self._generate_lock:  # one model, one request at a time
            if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                out = self.local.generate_encoded([prompt], ref, params)[0]
            elif isinstance(prompt, list):
                out = self.local.generate([prompt], ref, params)[0]
            else:
                raise ValueError("this server takes token-id prompts or chat messages, not raw text")
            self.served.append((name, path))
        return [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "stop_reason": None,
                 "tokens": c.token_count} for i, c in enumerate(out)]
