"""Pairwise losses against values worked out by hand, and TrainConfig validation."""
from __future__ import annotations

import pytest
import torch

from services.training.config import TrainConfig
from services.training.losses import pair_losses, sft_term

# (loss, beta, policy chosen, policy rejected, ref chosen, ref rejected, chosen tokens, rejected
# tokens, expected loss, expected chosen reward, expected rejected reward)
# Δ = (πc − rc) − (πr − rr).
CASES = [
    # Δ = 1 − (−1) = 2: −log σ(0.2) = log(1 + e^−0.2)
    ("sigmoid", 0.1, -10.0, -12.0, -11.0, -11.0, 4, 2, 0.5981388693815918, 0.1, -0.1),
    # Δ = −5: log(1 + e^0.5)
    ("sigmoid", 0.1, -20.0, -10.0, -18.0, -13.0, 4, 2, 0.9740769841801067, -0.2, 0.3),
    # Δ = 6, β = 0.5: log(1 + e^−3)
    ("sigmoid", 0.5, -4.0, -9.0, -7.0, -6.0, 4, 2, 0.04858735157374206, 1.5, -1.5),
    # policy = reference: Δ = 0, loss log 2
    ("sigmoid", 0.1, -5.0, -6.0, -5.0, -6.0, 1, 1, 0.6931471805599453, 0.0, 0.0),
    # hinge: max(0, 1 − 0.1·2) = 0.8; with β = 1 and Δ = 2 the margin is met: 0
    ("hinge", 0.1, -10.0, -12.0, -11.0, -11.0, 4, 2, 0.8, 0.1, -0.1),
    ("hinge", 1.0, -10.0, -12.0, -11.0, -11.0, 4, 2, 0.0, 1.0, -1.0),
    # ipo: per-token log-ratios 1/4 − (−1/2) = 0.75; (0.75 − 1/(2·0.1))² = (0.75 − 5)²
    ("ipo", 0.1, -10.0, -12.0, -11.0, -11.0, 4, 2, 18.0625, 0.1, -0.1),
    ("ipo", 0.5, -10.0, -12.0, -11.0, -11.0, 4, 2, 0.0625, 0.5, -0.5),
    # sft: no pairwise term
    ("sft", 0.1, -10.0, -12.0, -11.0, -11.0, 4, 2, 0.0, 0.1, -0.1),
]


@pytest.mark.parametrize("loss,beta,pc,pr,rc,rr,nc,nr,expected,chosen_reward,rejected_reward", CASES)
def test_pair_losses_hand_computed(loss, beta, pc, pr, rc, rr, nc, nr, expected, chosen_reward, rejected_reward):
    t = lambda x: torch.tensor([x], dtype=torch.float64)
    out = pair_losses(t(pc), t(pr), t(rc), t(rr), loss=loss, beta=beta,
                      chosen_tokens=torch.tensor([nc]), rejected_tokens=torch.tensor([nr]))
    assert out["losses"].item() == pytest.approx(expected, abs=1e-12)
    assert out["chosen_rewards"].item() == pytest.approx(chosen_reward, abs=1e-12)
    assert out["rejected_rewards"].item() == pytest.approx(rejected_reward, abs=1e-12)


def test_pair_losses_are_per_pair_and_differentiable():
    pc = torch.tensor([-10.0, -20.0], dtype=torch.float64, requires_grad=True)
    out = pair_losses(pc, torch.tensor([-12.0, -10.0]), torch.tensor([-11.0, -18.0]), torch.tensor([-11.0, -13.0]),
                      loss="sigmoid", beta=0.1)
    assert out["losses"].tolist() == pytest.approx([0.5981388693815918, 0.9740769841801067])
    out["losses"].sum().backward()
    # d/dπc of −log σ(βΔ) = −β·σ(−βΔ)
    assert pc.grad.tolist() == pytest.approx([-0.1 * torch.sigmoid(torch.tensor(-0.2)).item(),
                                              -0.1 * torch.sigmoid(torch.tensor(0.5)).item()])


def test_ipo_needs_lengths_and_unknown_loss_is_rejected():
    one = torch.zeros(1)
    with pytest.raises(ValueError, match="ipo"):
        pair_losses(one, one, one, one, loss="ipo", beta=0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        pair_losses(one, one, one, one, loss="kto", beta=0.1)


def test_sft_term_is_mean_token_nll():
    assert sft_term(torch.tensor([-6.0, -2.0]), 4).item() == pytest.approx(2.0)


@pytest.mark.parametrize("field,value", [
    ("loss", "dpo"), ("beta", 0.0), ("learning_rate", -1.0), ("epochs", 0), ("batch_size", 0),
    ("grad_accum", 1.5), ("warmup_ratio", 1.0), ("schedule", "step"), ("max_grad_norm", -1.0),
    ("lora_r", 0), ("lora_dropout", 1.0), ("lora_target_modules", []), ("logprob_chunk", 0),
    ("checkpoint_every", -1), ("distributed", "deepspeed"), ("sft_weight", -0.1),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"TrainConfig.{field}="):
        TrainConfig(**{field: value})


def test_config_round_trips_through_dict():
    cfg = TrainConfig(loss="ipo", beta=0.5, lora_target_modules=["q_proj"])
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"lr": 1.0})
