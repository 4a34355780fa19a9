"""The `tgi` backend against fake TGI servers over real HTTP, through huggingface_hub: n samples as
n seeded requests, parameter rules, retries on 429, balancing, a server down, policy refresh."""
from __future__ import annotations

import sys

import pytest
from fake_tgi import FakeTGI

from services.generation.base import ModelRef, SamplingParams, TransientBackendError
from services.generation.servers import RetryPolicy
from services.generation.tgi import TGIBackend, check_tgi_parameters, tgi_parameters
from shared.modeling import load_tokenizer, render_prompt

PROMPTS = [[{"role": "user", "content": "write a short poem about the sea"}],
           [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two plus two ?"}]]
FAST = RetryPolicy(retries=4, backoff=0.01, max_backoff=0.05, down_cooldown=0.5)




@pytest.fixture
def servers():
    started: list[FakeTGI] = []

    def make(**kwargs) -> FakeTGI:
        started.append(FakeTGI(**kwargs).start())
        return started[-1]

    yield make
    for s in started:
        s.stop()


def backend(*fakes: FakeTGI, **kwargs) -> TGIBackend:
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("poll_interval", 0.05)
    return TGIBackend([f.url for f in fakes], **kwargs)


def test_n_samples_are_seeded_requests_on_rendered_prompts(tiny_model, servers):
    fake = servers()
    out = backend(fake).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=3, seed=100, max_new_tokens=8))
    assert [len(per_prompt) for per_prompt in out] == [3, 3]
    tok = load_tokenizer(tiny_model)
    for messages, per_prompt in zip(PROMPTS, out):
        sent = [r for r in fake.requests if r["inputs"] == render_prompt(tok, messages)]
        assert sorted(r["parameters"]["seed"] for r in sent) == [100, 101, 102]
        assert all(r["parameters"]["do_sample"] and r["parameters"]["details"] for r in sent)
        assert len({c.text for c in per_prompt}) == 3
        for c in per_prompt:
            assert 1 <= c.token_count <= 8 and c.finish_reason in ("stop", "length")
    again = backend(fake).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=3, seed=100, max_new_tokens=8))
    assert again == out


def test_greedy_sends_one_request_per_prompt(tiny_model, servers):
    fake = servers()
    out = backend(fake).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=3, temperature=0, max_new_tokens=6))
    assert len(fake.requests) == 2
    assert all(r["parameters"]["do_sample"] is False and "seed" not in r["parameters"] for r in fake.requests)
    assert all(per_prompt[0] == per_prompt[1] == per_prompt[2] for per_prompt in out)


@pytest.mark.parametrize("params, expected", [
    (SamplingParams(top_p=1.0, top_k=0), {"top_p": None, "top_k": None, "do_sample": True}),
    (SamplingParams(top_p=0.9, top_k=40, temperature=1.2), {"top_p": 0.9, "top_k": 40, "temperature": 1.2}),
    (SamplingParams(temperature=0, top_p=0.5), {"do_sample": False, "top_p": None}),
    (SamplingParams(stop=["\n\n"], max_new_tokens=5), {"stop": ["\n\n"], "max_new_tokens": 5}),
])
def test_parameters_in_tgi_terms(params, expected):
    mapped = tgi_parameters(params)
    check_tgi_parameters(mapped)
    for key, value in expected.items():
        assert mapped.get(key) == value, key


@pytest.mark.parametrize("parameters, message", [
    ({"temperature": 0.0}, "temperature > 0"),
    ({"top_p": 1.0}, "top_p strictly inside"),
    ({"top_k": 0}, "top_k > 0"),
    ({"stop": list("abcde")}, "at most 4 stop sequences"),
    ({"best_of": 2, "seed": 1, "do_sample": True}, "seed together with best_of"),
    ({"best_of": 3, "do_sample": True}, "best_of is at most 2"),
])
def test_tgi_rules_rejected_before_sending(parameters, message):
    with pytest.raises(ValueError, match=message):
        check_tgi_parameters(parameters)


def test_too_many_stops_fail_without_any_request(tiny_model, servers):
    fake = servers()
    with pytest.raises(ValueError, match="at most 4 stop sequences"):
        backend(fake).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(stop=list("abcde")))
    assert fake.requests == [] and fake.invalid == 0


def test_server_validation_error_is_a_value_error_not_retried(tiny_model, servers):
    fake = servers(max_total_tokens=64)
    with pytest.raises(ValueError, match="max_new_tokens"):
        backend(fake).generate(PROMPTS[:1], ModelRef(tiny_model), SamplingParams(max_new_tokens=500))
    assert fake.invalid == 1


def test_stop_sequences_cut_text(tiny_model, servers):
    fake = servers()
    out = backend(fake).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=8, stop=["."], max_new_tokens=30, seed=1))
    completions = [c for per_prompt in out for c in per_prompt]
    assert all("." not in c.text for c in completions)
    stopped = [r for r in fake.requests if "." in r["parameters"].get("stop", [])]
    assert len(stopped) == 16
    assert any(c.finish_reason == "stop" and c.token_count < 30 for c in completions)


def test_retries_on_429_until_served(tiny_model, servers):
    fake = servers(max_concurrent=2, latency=0.02)
    fake.overload_next(3)
    out = backend(fake, max_concurrency=6).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=4, max_new_tokens=4))
    assert [len(x) for x in out] == [4, 4]
    assert fake.rejected >= 3 and len(fake.requests) == 8


def test_gives_up_with_transient_error(tiny_model, servers):
    fake = servers()
    fake.overload_next(1000)
    with pytest.raises(TransientBackendError, match="5 attempts"):
        backend(fake).generate(PROMPTS[:1], ModelRef(tiny_model), SamplingParams(max_new_tokens=4))


def test_balances_over_two_servers(tiny_model, servers):
    a, b = servers(latency=0.02), servers(latency=0.02)
    backend(a, b, max_concurrency=4).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=8, max_new_tokens=4))
    assert len(a.requests) + len(b.requests) == 16
    assert min(len(a.requests), len(b.requests)) >= 5


def test_skips_a_server_that_is_down(tiny_model, servers):
    a, b = servers(), servers()
    b.stop()
    out = backend(a, b).generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=3, max_new_tokens=4))
    assert [len(x) for x in out] == [3, 3] and len(a.requests) == 6


def test_policy_refresh_through_a_callable(tiny_model, servers):
    fake = servers(adapters=["v1"])
    calls = []

    def hook(path: str, adapter_id: str) -> None:
        calls.append((path, adapter_id))
        fake.restart(adapters=["v1", adapter_id], downtime=0.2)

    tgi = backend(fake, refresh_command=hook)
    model = ModelRef(tiny_model, adapter_path="/artifacts/run1/round2-policy", version_id=7)
    out = tgi.generate(PROMPTS, model, SamplingParams(n=2, max_new_tokens=4))
    assert calls == [("/artifacts/run1/round2-policy", "v7")] and fake.restarts == 1
    assert [len(x) for x in out] == [2, 2]
    assert {r["parameters"]["adapter_id"] for r in fake.requests} == {"v7"}
    # Served now: no second refresh; the base model is sampled without adapter_id.
    tgi.generate(PROMPTS, model, SamplingParams(max_new_tokens=4))
    tgi.generate(PROMPTS, ModelRef(tiny_model), SamplingParams(max_new_tokens=4))
    assert len(calls) == 1
    assert sum(1 for r in fake.requests if r["parameters"].get("adapter_id") is None) == 2


def test_policy_refresh_through_a_shell_command(tiny_model, servers):
    # Like real TGI, this server does not list its adapters: the backend waits for it to come back.
    fake = servers(report_adapters=False)
    command = (f"{sys.executable} -c 'import sys, urllib.request; urllib.request.urlopen("
               f"\"{fake.url}/_admin/restart\", data=sys.argv[1].encode())' {{adapter_id}}")
    model = ModelRef(tiny_model, adapter_path="/artifacts/v8", version_id=8)
    out = backend(fake, refresh_command=command).generate(PROMPTS, model, SamplingParams(max_new_tokens=4))
    assert fake.restarts == 1 and fake.adapters == ["v8"]
    assert [len(x) for x in out] == [1, 1]
    assert {r["parameters"]["adapter_id"] for r in fake.requests} == {"v8"}


def test_unserved_adapter_without_hook_is_an_actionable_error(tiny_model, servers):
    fake = servers()
    with pytest.raises(ValueError, match="LORA_ADAPTERS"):
        backend(fake).generate(PROMPTS, ModelRef(tiny_model, "/artifacts/v3", 3), SamplingParams())
    assert fake.requests == []


def test_refresh_that_never_lands_times_out(tiny_model, servers):
    fake = servers()
    tgi = backend(fake, refresh_command=lambda path, name: None, refresh_timeout=0.3)
    with pytest.raises(TransientBackendError, match="not served"):
        tgi.generate(PROMPTS, ModelRef(tiny_model, "/artifacts/v4", 4), SamplingParams())
