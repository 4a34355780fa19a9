"""The local generation backend on a tiny random Gemma 3 model: shapes, stopping, seeds, greedy
agreement with transformers' own generate, and LoRA adapter swaps on one cached base."""
from __future__ import annotations

import pytest
import torch

from services.generation.base import (
    Backend,
    Completion,
    ModelRef,
    SamplingParams,
    cut_at_stop,
)
from services.generation.local import LocalBackend
from shared.modeling import load_base, load_tokenizer, prompt_ids

PROMPTS = [
    [{"role": "user", "content": "write a short poem about the sea"}],
    [{"role": "user", "content": "two"}],
    [{"role": "user", "content": "explain why the sky is blue . list three fruits : apple , banana"}],
]


def _make_adapter(base_dir: str, out_dir, seed: int) -> str:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = load_base(base_dir, device="cpu", cache=False)
    # init_lora_weights=False draws B at random too, so the adapter changes the outputs.
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="session")
def adapters(tiny_model, tmp_path_factory) -> list[str]:
    return [_make_adapter(tiny_model, tmp_path_factory.mktemp(f"adapter{k}"), seed=k) for k in (1, 2)]


@pytest.fixture(scope="session")
def backend() -> LocalBackend:
    return LocalBackend(device="cpu", max_batch_rows=8)


def texts(result: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in per_prompt] for per_prompt in result]


@pytest.mark.parametrize("kwargs, field", [
    ({"n": 0}, "n"), ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"stop": "###"}, "stop"), ({"stop": [""]}, "stop"), ({"seed": -3}, "seed"),
])
def test_sampling_params_reject_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("text, stop, expected", [
    ("hello world. bye", ["."], ("hello world", True)),
    ("a<b>c", ["c", "<b>"], ("a", True)),
    ("nothing here", ["zz"], ("nothing here", False)),
    ("x", [], ("x", False)),
])
def test_cut_at_stop(text, stop, expected):
    assert cut_at_stop(text, stop) == expected


def test_backend_satisfies_protocol(backend):
    assert isinstance(backend, Backend)


def test_n_samples_per_prompt_in_order(tiny_model, backend):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=0)
    result = backend.generate(PROMPTS, ModelRef(tiny_model), params)
    assert len(result) == len(PROMPTS)
    for per_prompt in result:
        assert len(per_prompt) == 3
        for c in per_prompt:
            assert 1 <= c.token_count <= 12
            assert c.finish_reason in ("stop", "length")
            assert c.finish_reason == "stop" or c.token_count == 12
    # Prompt order is kept although the backend sorts rows by length: a prompt alone gives the
    # same samples as in the batch.
    alone = backend.generate([PROMPTS[1]], ModelRef(tiny_model), params)
    assert texts(alone)[0] == texts(result)[1]
    assert backend.generate([], ModelRef(tiny_model), params) == []


def test_greedy_matches_transformers_generate(tiny_model, backend):
    tok, model = load_tokenizer(tiny_model), load_base(tiny_model, device="cpu")
    result = backend.generate(PROMPTS, ModelRef(tiny_model), SamplingParams(n=2, temperature=0, max_new_tokens=40))
    for messages, per_prompt in zip(PROMPTS, result):
        ids = torch.tensor([prompt_ids(tok, messages)])
        ref = model.generate(ids, do_sample=False, max_new_tokens=40)[0, ids.shape[1]:]
        assert per_prompt[0].text == tok.decode(ref, skip_special_tokens=True)
        assert per_prompt[0].token_count == len(ref)
        assert per_prompt[1] == per_prompt[0]


@pytest.mark.parametrize("filters", [{"top_k": 1}, {"top_p": 1e-6}])
def test_tightest_filters_reduce_to_greedy(tiny_model, backend, filters):
    greedy = backend.generate(PROMPTS, ModelRef(tiny_model), SamplingParams(temperature=0, max_new_tokens=16))
    sampled = backend.generate(PROMPTS, ModelRef(tiny_model),
                               SamplingParams(temperature=1.5, max_new_tokens=16, seed=3, **filters))
    assert texts(sampled) == texts(greedy)


def test_stop_string_truncates(tiny_model, backend):
    ref = backend.generate([PROMPTS[0]], ModelRef(tiny_model), SamplingParams(temperature=0, max_new_tokens=40))[0][0]
    assert len(ref.text) > 12, "the tiny model should ramble for 40 tokens"
    stop = ref.text[8:11]
    first = ref.text.find(stop)
    got = backend.generate([PROMPTS[0]], ModelRef(tiny_model),
                           SamplingParams(temperature=0, max_new_tokens=40, stop=["@@never@@", stop]))[0][0]
    assert got.text == ref.text[:first]
    assert got.finish_reason == "stop"
    assert got.token_count < ref.token_count


def test_seeds_reproduce_and_differ(tiny_model, backend):
    def run(seed):
        return texts(backend.generate(PROMPTS, ModelRef(tiny_model),
                                      SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=seed)))

    first, again, other = run(7), run(7), run(8)
    assert first == again
    assert first != other
    assert first[0][0] != first[0][1], "the n samples of a prompt draw different random numbers"


def test_adapters_swap_on_one_cached_base(tiny_model, adapters, backend):
    params = SamplingParams(temperature=0, max_new_tokens=24)
    base_model = load_base(tiny_model, device="cpu")
    base_out = texts(backend.generate(PROMPTS, ModelRef(tiny_model), params))
    a1 = texts(backend.generate(PROMPTS, ModelRef(tiny_model, adapters[0], version_id=1), params))
    a2 = texts(backend.generate(PROMPTS, ModelRef(tiny_model, adapters[1], version_id=2), params))
    a1_again = texts(backend.generate(PROMPTS, ModelRef(tiny_model, adapters[0], version_id=1), params))
    base_again = texts(backend.generate(PROMPTS, ModelRef(tiny_model), params))
    # An adapter named by its path hash (no version id) works as well.
    a2_by_path = texts(backend.generate(PROMPTS, ModelRef(tiny_model, adapters[1]), params))

    assert a1 != base_out and a2 != base_out and a1 != a2
    assert a1_again == a1 and a2_by_path == a2 and base_again == base_out
    # The adapters live on the one cached base object, which was never reloaded...
    assert load_base(tiny_model, device="cpu") is base_model
    assert any("lora_A" in name for name, _ in base_model.named_parameters())
    # ...and is left with adapter layers off, so other users of the cache see the plain base.
    tok = load_tokenizer(tiny_model)
    ids = torch.tensor([prompt_ids(tok, PROMPTS[0])])
    plain = base_model.generate(ids, do_sample=False, max_new_tokens=24)[0, ids.shape[1]:]
    assert tok.decode(plain, skip_special_tokens=True) == base_out[0][0]


def test_registry_builds_and_caches_backends():
    from services.generation.openai_compat import OpenAIBackend
    from services.generation.registry import get_backend
    from services.generation.tgi import TGIBackend

    local = get_backend("local", device="cpu")
    assert isinstance(local, LocalBackend) and get_backend("local", device="cpu") is local
    assert isinstance(get_backend("tgi", urls=["http://127.0.0.1:9"]), TGIBackend)
    assert isinstance(get_backend("tgi", url="http://127.0.0.1:9"), TGIBackend)
    assert isinstance(get_backend("openai", base_url="http://127.0.0.1:9/v1"), OpenAIBackend)
    with pytest.raises(ValueError, match="unknown generation backend"):
        get_backend("llamacpp")
    with pytest.raises(ValueError, match="does not take option"):
        get_backend("local", urls=["http://x"])


def test_gemma_cache_fast_path_and_env_override(tmp_path, monkeypatch, fresh_settings):
    from shared import gemma

    monkeypatch.setenv("AUTODIDACT_MODEL_CACHE", str(tmp_path))
    ready = tmp_path / gemma.MODEL_DIR_NAME
    ready.mkdir()
    (ready / gemma._DONE).write_text("done")
    assert gemma.prepare_gemma() == ready  # found, nothing converted


@pytest.mark.parametrize("messages, expected", [
    ([{"role": "user", "content": "Hi"}],
     "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye "}],
     ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n"
      "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")),
])
def test_gemma_chat_template(messages, expected):
    import jinja2

    from shared.gemma import CHAT_TEMPLATE

    rendered = jinja2.Environment().from_string(CHAT_TEMPLATE).render(
        messages=messages, bos_token="<bos>", add_generation_prompt=True)
    assert rendered == expected


def test_build_once_builds_once_under_concurrency_and_never_half(tmp_path):
    import threading
    import time

    from shared.gemma import build_once, is_prepared

    calls = []

    def slow_build(out):
        calls.append(out)
        time.sleep(0.2)
        (out / "weights.bin").write_text("w")

    target = tmp_path / "model"
    results = []
    threads = [threading.Thread(target=lambda: results.append(build_once(target, slow_build))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results == [target] * 3
    assert (target / "weights.bin").exists() and is_prepared(target)

    def broken_build(out):
        (out / "half.bin").write_text("x")
        raise RuntimeError("killed mid-way")

    other = tmp_path / "other"
    with pytest.raises(RuntimeError):
        build_once(other, broken_build)
    assert not other.exists() and not list(tmp_path.glob(".other-*"))
    assert build_once(other, slow_build) == other and len(calls) == 2
