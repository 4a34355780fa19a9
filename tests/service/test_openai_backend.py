"""The `openai` backend against fake vLLM-like servers over real HTTP: completions with n, chat
completions, run-time LoRA loading for policy refresh, retries and a server down."""
from __future__ import annotations

import pytest
from fake_openai import FakeOpenAI

from services.generation.base import ModelRef, SamplingParams
from services.generation.openai_compat import OpenAIBackend
from services.generation.servers import RetryPolicy
from shared.modeling import load_tokenizer, prompt_ids

PROMPTS = [[{"role": "user", "content": "list three fruits"}],
           [{"role": "user", "content": "answer with yes or no . is the sky blue ?"}]]
FAST = RetryPolicy(retries=4, backoff=0.01, max_backoff=0.05, down_cooldown=0.5)




@pytest.fixture
def servers():
    started: list[FakeOpenAI] = []

    def make(**kwargs) -> FakeOpenAI:
        started.append(FakeOpenAI(**kwargs).start())
        return started[-1]

    yield make
    for s in started:
        s.stop()


def backend(*fakes: FakeOpenAI, **kwargs) -> OpenAIBackend:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("poll_interval", 0.05)
    return OpenAIBackend(urls=[f.url for f in fakes], **kwargs)


def test_completions_with_n_on_token_id_prompts(tiny_model, servers):
    fake = servers()
    params = SamplingParams(n=3, seed=5, max_new_tokens=6, top_k=20)
    out = backend(fake).generate(PROMPTS, ModelRef(tiny_model), params)
    sent = fake.posts("/v1/completions")
    assert len(sent) == 2 and all(b["n"] == 3 and b["seed"] == 5 and b["top_k"] == 20 for b in sent)
    assert all(b["model"] == "tiny-base" for b in sent)
    tok = load_tokenizer(tiny_model)
    assert sorted(b["prompt"] for b in sent) == sorted(prompt_ids(tok, p) for p in PROMPTS)
    assert [len(x) for x in out] == [3, 3]
    assert all(len({c.text for c in per_prompt}) > 1 for per_prompt in out)
    # n > 1: per-response counts are the text re-tokenized, plus the end-of-turn token on "stop".
    for c in (c for per_prompt in out for c in per_prompt):
        words = len(tok(c.text, add_special_tokens=False)["input_ids"])
        assert c.token_count == words + (1 if c.finish_reason == "stop" else 0)
    assert backend(fake).generate(PROMPTS, ModelRef(tiny_model), params) == out


def test_single_sample_counts_come_from_usage_and_stops_cut(tiny_model, servers):
    fake = servers()
    out = backend(fake).generate(PROMPTS * 4, ModelRef(tiny_model), SamplingParams(stop=["."], max_new_tokens=20, seed=2))
    flat = [per_prompt[0] for per_prompt in out]
    assert all("." not in c.text for c in flat)
    assert any(c.finish_reason == "stop" for c in flat)
    assert all(1 <= c.token_count <= 21 for c in flat)


def test_chat_endpoint_sends_messages(tiny_model, servers):
    fake = servers()
    out = backend(fake, endpoint="chat").generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=2, max_new_tokens=4))
    sent = fake.posts("/v1/chat/completions")
    assert sorted(map(str, (b["messages"] for b in sent))) == sorted(map(str, PROMPTS))
    assert [len(x) for x in out] == [2, 2]


def test_policy_refresh_loads_the_adapter_at_run_time_once(tiny_model, servers):
    a, b = servers(), servers(adapters={"v5": "/artifacts/v5"})  # b got it from another worker
    openai = backend(a, b)
    model = ModelRef(tiny_model, adapter_path="/artifacts/v5", version_id=5)
    openai.generate(PROMPTS, model, SamplingParams(max_new_tokens=4))
    openai.generate(PROMPTS, model, SamplingParams(max_new_tokens=4))
    assert a.posts("/v1/load_lora_adapter") == [{"lora_name": "v5", "lora_path": "/artifacts/v5"}]
    assert b.posts("/v1/load_lora_adapter") == []
    sampled = a.posts("/v1/completions") + b.posts("/v1/completions")
    assert len(sampled) == 4 and {s["model"] for s in sampled} == {"v5"}


def test_runtime_loading_disabled_is_an_actionable_error(tiny_model, servers):
    fake = servers(runtime_lora=False)
    with pytest.raises(ValueError, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
        backend(fake).generate(PROMPTS, ModelRef(tiny_model, "/artifacts/v6", 6), SamplingParams())


def test_retries_and_skips_a_down_server(tiny_model, servers):
    a, b = servers(), servers()
    b.stop()
    a.overload_next(2)
    out = backend(a, b).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=2, max_new_tokens=4))
    assert [len(x) for x in out] == [2, 2]
    assert a.rejected == 2 and len(a.posts("/v1/completions")) == 2


def test_bad_configuration_fails_fast():
    with pytest.raises(ValueError, match="endpoint"):
        OpenAIBackend("http://127.0.0.1:1", endpoint="responses")
    with pytest.raises(ValueError, match="no server URLs"):
        OpenAIBackend()


@pytest.fixture(scope="module")
def real_adapters(tiny_model, tmp_path_factory) -> list[str]:
    from tests.unit.test_local_backend import _make_adapter

    return [_make_adapter(tiny_model, tmp_path_factory.mktemp(f"oa-adapter{k}"), seed=k) for k in (1, 2, 3)]


def test_a_model_server_samples_the_adapter_asked_for_and_old_ones_are_unloaded(tiny_model, real_adapters):
    from fake_openai import ModelOpenAI

    server = ModelOpenAI(tiny_model).start()
    try:
        openai = backend(server, max_loras=2)
        params = SamplingParams(n=2, max_new_tokens=8, seed=3, temperature=0)
        base = openai.generate(PROMPTS, ModelRef(tiny_model), params)
        outs = [openai.generate(PROMPTS, ModelRef(tiny_model, path, version_id=k), params)
                for k, path in enumerate(real_adapters, 1)]
        # real generation: the base and each adapter answer differently, greedy answers repeat
        texts = [[c.text for per in out for c in per] for out in (base, *outs)]
        assert len({tuple(t) for t in texts}) == 4 and all(t[0] == t[1] for t in texts)
        assert [name for name, _ in server.served] == ["tiny-base"] * 2 + ["v1"] * 2 + ["v2"] * 2 + ["v3"] * 2
        assert [path for name, path in server.served if name == "v2"] == [real_adapters[1]] * 2
        # at most two resident: loading v3 unloaded v1, the least recently used
        assert server.posts("/v1/unload_lora_adapter") == [{"lora_name": "v1"}]
        assert set(server.adapters) == {"v2", "v3"}
        again = openai.generate(PROMPTS, ModelRef(tiny_model, real_adapters[0], version_id=1), params)
        assert again == outs[0]  # reloaded from its directory: the same adapter, the same greedy answers
        assert set(server.adapters) == {"v3", "v1"} and server.served[-1][0] == "v1"
    finally:
        server.stop()


def test_max_loras_must_be_a_count():
    with pytest.raises(ValueError, match="max_loras"):
        OpenAIBackend("http://127.0.0.1:1", max_loras=-1)
