"""A chat-capable start: turn a pretrained base (Gemma 3 270M in the embedded default) into a model
that answers in the chat format and ends its turn, before any self-improvement round.

The self-improvement methods assume a policy that already answers: SPIN's opponent, ReST-EM's
sampler, Self-Rewarding's M1 and SPaR's actor are all instruction-tuned in the papers. A pretrained
270M model, asked in the chat format, echoes the prompt and runs to the token limit; a tiny SFT
(64 prompts, 32 steps) taught the format but not the stop, so every answer ran to the limit.

What this does: supervised fine-tuning (LoRA, then merged into a plain model directory) on the
gold answers of the built-in curriculum's *training* split — about a thousand prompts by default,
each answer a short text that meets its verifiable instructions and ends with the end-of-turn token.
The held-out split (disjoint topics) is never read here. The result is cached in the user cache
under a name derived from the settings, built once (a file lock serialises concurrent builders), so
the demo and the benchmark reuse it; `autodidact bootstrap` builds it explicitly.

Training it takes about an hour on a 2-core CPU, so the LoRA adapter of the default settings is
shipped with the package (chat_start_adapter/<settings key>/, float16, ~7 MB): on a new machine the
start is the base with that adapter merged in, in seconds. `autodidact bootstrap --retrain` trains
it from scratch instead and leaves the new adapter beside the merged model.

Departure from the papers: they start from an instruction-tuned checkpoint; we make a small one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

VERSION = 1  # bump when the data or the recipe changes, so an old cache entry is not reused
SHIPPED = Path(__file__).with_name("chat_start_adapter")


@dataclass(frozen=True)
class ChatStartConfig:
    base_model: str = "gemma"
    n_train: int = 1000  # curriculum training prompts (train topics only)
    epochs: int = 1
    learning_rate: float = 2e-4  # LoRA; 400x SFT-full-tuning rates, usual for r=16 adapters
    batch_size: int = 8
    lora_r: int = 16
    lora_alpha: int = 32
    max_response_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.n_train <= 20000:
            raise ValueError(f"n_train must be in 1..20000, got {self.n_train}")
        if not 1 <= self.epochs <= 10:
            raise ValueError(f"epochs must be in 1..10, got {self.epochs}")
        if not 0 < self.learning_rate <= 1e-2:
            raise ValueError(f"learning_rate must be in (0, 0.01], got {self.learning_rate}")

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


DEFAULT = ChatStartConfig()


def training_examples(cfg: ChatStartConfig) -> list[dict]:
    """SFT examples {"messages", "response"} from the curriculum's training split."""
    from services.curriculum.generator import build_curriculum

    items = build_curriculum(seed=cfg.seed, n_train=cfg.n_train, n_heldout=0, n_eft=0)["train"]
    return [{"messages": [{"role": "user", "content": it["prompt"]}], "response": it["reference"]} for it in items]


def target_dir(cfg: ChatStartConfig = DEFAULT) -> Path:
    from shared.modeling import chat_start_dir

    if cfg == DEFAULT:
        return chat_start_dir(cfg.base_model)
    return chat_start_dir(cfg.base_model).with_name(f"{chat_start_dir(cfg.base_model).name}-{cfg.key()}")


def shipped_adapter(cfg: ChatStartConfig = DEFAULT) -> Path | None:
    path = SHIPPED / cfg.key()
    return path if (path / "adapter_model.safetensors").exists() else None


def build_chat_start(cfg: ChatStartConfig = DEFAULT, on_step: Callable[[dict], None] | None = None,
                     retrain: bool = False) -> Path:
    """The merged chat-start model directory for `cfg`: cached, else merged from the shipped
    adapter, else (or with `retrain`) trained now."""
    from shared.gemma import build_once, is_prepared

    target = target_dir(cfg)
    if retrain and is_prepared(target):
        shutil.rmtree(target)

    def build(tmp: Path) -> None:
        from services.training.config import TrainConfig
        from services.training.trainer import train_sft
        from shared.modeling import merge_adapter

        shipped = None if retrain else shipped_adapter(cfg)
        if shipped is not None:
            merge_adapter(cfg.base_model, shipped, tmp)
            (tmp / "chat_start.json").write_text(json.dumps(
                {"config": asdict(cfg), "version": VERSION, "adapter": f"shipped ({shipped.name})"}, indent=1))
            return
        examples = training_examples(cfg)
        log.info("chat start: SFT of %s on %d curriculum answers (%d epoch(s)); this is done once",
                 cfg.base_model, len(examples), cfg.epochs)
        tcfg = TrainConfig(loss="sft", learning_rate=cfg.learning_rate, epochs=cfg.epochs,
                           batch_size=cfg.batch_size, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                           max_response_tokens=cfg.max_response_tokens, seed=cfg.seed, checkpoint_every=0)
        adapter = tmp / "adapter"
        summary = train_sft(base_model=cfg.base_model, examples=examples, out_dir=adapter, config=tcfg,
                            on_step=on_step)
        merge_adapter(cfg.base_model, adapter, tmp)  # the adapter stays beside it (export_adapter)
        (tmp / "chat_start.json").write_text(json.dumps(
            {"config": asdict(cfg), "version": VERSION, "examples": len(examples), "train": summary}, indent=1))

    return build_once(target, build)


def export_adapter(adapter: Path, cfg: ChatStartConfig = DEFAULT) -> Path:
    """Store a trained chat-start adapter (float16) where shipped_adapter finds it."""
    from safetensors.torch import load_file, save_file

    out = SHIPPED / cfg.key()
    out.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    save_file({k: v.half().contiguous() for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    shutil.copy(Path(adapter) / "adapter_config.json", out / "adapter_config.json")
    return out
