"""Pairwise preference losses on sequence log-probabilities (pure tensor code, no model).

Inputs are summed response-token log-probs log π(y|x) of the policy and the reference for the
chosen and the rejected response of each pair. With Δ = [log πθ(yc) − log πref(yc)] −
[log πθ(yr) − log πref(yr)]:
- sigmoid (DPO; SPIN's loss with chosen = gold, rejected = self-generated): −log σ(β·Δ)
- hinge (SLiC): max(0, 1 − β·Δ)
- ipo (Azar et al. 2023, eq. 17): (Δ̄ − 1/(2β))², where Δ̄ uses log-ratios averaged per response
  token. The paper writes sequence log-probs; the per-token average is TRL's reading, confirmed by
  the IPO authors, and we follow it so that β means the same thing in both.
- sft: no pairwise term; the NLL of chosen (see `sft_term`) carries the whole loss.
Rewards are β times each log-ratio, as in DPO. Out of scope: label smoothing, robust/EXO/... losses.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                ref_rejected: torch.Tensor, *, loss: str, beta: float,
                chosen_tokens: torch.Tensor | None = None,
                rejected_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-pair losses and rewards. Token counts are needed by "ipo" only."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss == "hinge":
        losses = torch.relu(1 - beta * delta)
    elif loss == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs chosen_tokens and rejected_tokens (response lengths)")
        per_token = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    elif loss == "sft":
        losses = torch.zeros_like(delta)
    else:
        raise ValueError(f"unknown loss {loss!r}; use sigmoid, ipo, hinge or sft")
    return {"losses": losses, "chosen_rewards": (beta * chosen_ratio).detach(),
            "rejected_rewards": (beta * rejected_ratio).detach()}


def sft_term(chosen_logp_sum: torch.Tensor, n_tokens: int | torch.Tensor) -> torch.Tensor:
    """Mean NLL per response token: −Σ log p / number of tokens (token-weighted, like a causal LM's
    cross-entropy with the prompt masked)."""
    return -chosen_logp_sum.sum() / n_tokens
