"""TrainConfig: every knob of one SFT or pairwise training call, validated on construction.

Defaults follow the papers in METHODS.md (SPIN: β 0.1, lr 5e-7, 2 epochs; SPaR: an SFT term of
weight 0.1 on chosen) and TRL's DPOConfig where the papers are silent (AdamW without weight decay,
linear decay after warmup, clipping at 1.0). The config is plain data: `asdict` / `from_dict`
round-trip through JSON, which is how a run stores it and how launch.py hands it to its workers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

LOSSES = ("sigmoid", "ipo", "hinge", "sft")
SCHEDULES = ("linear", "cosine", "constant")
DISTRIBUTED = ("none", "ddp", "fsdp")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    # sigmoid = DPO / SPIN (Rafailov et al. 2023, Chen et al. 2024); ipo = Azar et al. 2023, with
    # log-ratios averaged per token as TRL does; hinge = SLiC (Zhao et al. 2023); sft = NLL of chosen.
    loss: str = "sigmoid"
    beta: float = 0.1
    sft_weight: float = 0.0  # extra NLL term on chosen (SPaR uses 0.1)
    learning_rate: float = 5e-7
    epochs: int = 2
    batch_size: int = 8  # pairs (or examples) per forward; an optimizer step sees batch_size * grad_accum
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    schedule: str = "linear"
    final_lr_ratio: float = 0.0  # linear / cosine decay ends at learning_rate * this (Self-Rewarding: 0.1)
    max_grad_norm: float = 1.0  # 0 turns clipping off
    seed: int = 0
    lora: bool = True  # False = full fine-tuning
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    max_prompt_tokens: int = 512  # the prompt keeps its end (the part next to the response)
    max_response_tokens: int = 512  # the response keeps its start
    logprob_chunk: int = 256  # response positions per lm_head chunk (a [chunk, vocab] fp32 block each)
    checkpoint_every: int = 50  # optimizer steps; 0 = never
    # Pairwise losses: run the shared prompt through the body once per pair (one packed row with a
    # segment mask, logprobs.collate_pairs) instead of once with chosen and once with rejected.
    # Same log-probs; falls back to separate rows for attention kernels that take no custom mask.
    share_prompt: bool = True
    # Pairwise losses: score the end-of-turn token that closes a rejected response (True: standard
    # DPO, the whole rejected sequence is pushed down, its ending included). False scores every
    # rejected response as the prefix of tokens it wrote, so the loss never lowers the chance of
    # ending: a rejected answer is worse for what it says, not for stopping. Chosen responses keep
    # their end-of-turn either way. A response cut at the generation limit never has one. A number
    # in [0, 1] is the middle course: the share of rejected responses whose end is scored, each
    # pair's lot drawn from a hash of the pair and `seed` (the same in every pass over the pairs);
    # in expectation that weighs the rejected end by the share.
    score_rejected_end: bool | float = True
    # Most token positions (rows x padded width) one forward/backward holds; a batch above it runs as
    # several forwards whose gradients add up before the step (same update, fewer live activations).
    # 0 = the whole batch at once.
    forward_tokens: int = 1024
    # Guards of pairwise training (0 turns one off). Measured every step on the step's own batch,
    # before the update: `max_kl` bounds an estimate of KL(reference || policy) in nats per token,
    # the mean of (log πref − log πθ) per token over the rejected responses (the model's own samples
    # in SPIN, Self-Rewarding and SPaR, so this is a Monte-Carlo KL estimate); `max_reward_margin`
    # bounds the mean β·(chosen log-ratio − rejected log-ratio). When one is exceeded, training
    # stops and the weights of the last step that measured within bounds are kept (see trainer.py).
    # A collapsed SPIN round on Gemma 3 270M (lr 5e-5) reached a reward margin of 115 and pushed
    # its own samples down by about 8 nats per token; healthy rounds stay far below both ceilings.
    max_kl: float = 0.5
    max_reward_margin: float = 25.0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    distributed: str = "none"  # none | ddp | fsdp (see launch.py)

    def __post_init__(self):
        def bad(name: str, want: str):
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: {want}")

        if self.loss not in LOSSES:
            bad("loss", f"use one of {', '.join(LOSSES)}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"use one of {', '.join(SCHEDULES)}")
        if self.distributed not in DISTRIBUTED:
            bad("distributed", f"use one of {', '.join(DISTRIBUTED)}")
        for name in ("beta", "learning_rate", "lora_alpha"):
            if not getattr(self, name) > 0:
                bad(name, "must be > 0")
        for name in ("epochs", "batch_size", "grad_accum", "lora_r", "max_prompt_tokens",
                     "max_response_tokens", "logprob_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                bad(name, "must be an integer >= 1")
        for name in ("sft_weight", "max_grad_norm", "max_kl", "max_reward_margin"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if not 0 <= self.final_lr_ratio <= 1:
            bad("final_lr_ratio", "must be in [0, 1]")
        if not 0 <= self.warmup_ratio < 1:
            bad("warmup_ratio", "must be in [0, 1)")
        if not 0 <= self.lora_dropout < 1:
            bad("lora_dropout", "must be in [0, 1)")
        if not isinstance(self.share_prompt, bool):
            bad("share_prompt", "must be true or false")
        if not valid_end_share(self.score_rejected_end):
            bad("score_rejected_end", "must be true, false or a share in [0, 1]")
        if not isinstance(self.forward_tokens, int) or isinstance(self.forward_tokens, bool) \
                or self.forward_tokens < 0:
            bad("forward_tokens", "must be an integer >= 0 (0 = the whole batch in one forward)")
        if not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0:
            bad("checkpoint_every", "must be an integer >= 0 (0 = never)")
        if not self.lora_target_modules or not all(isinstance(m, str) for m in self.lora_target_modules):
            bad("lora_target_modules", "must be a non-empty list of module names such as 'q_proj'")
        self.lora_target_modules = list(self.lora_target_modules)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields are {sorted(known)}")
        return cls(**data)


def valid_end_share(value) -> bool:
    """`score_rejected_end`'s values: true, false, or a finite share in [0, 1]."""
    if isinstance(value, bool):
        return True
    return isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1
