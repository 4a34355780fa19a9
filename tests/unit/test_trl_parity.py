"""Our losses and gradients equal TRL's DPOTrainer (and a plain causal-LM cross-entropy for SFT).

Both sides score the very same token ids: our encoding of the pairs goes through TRL's own
DataCollatorForPreference, and TRL's `compute_loss` runs on the same model object whose LoRA
weights were perturbed away from zero (so the policy differs from the reference and every
gradient is non-trivial). float32 throughout; tolerance 1e-5 (relative for values above 1).
"""
from __future__ import annotations

import warnings

import pytest
import torch

from services.training.logprobs import Scorer, collate, collate_pairs, encode, score, score_all, score_pairs_all
from services.training.losses import pair_losses, sft_term
from shared.modeling import load_tokenizer

trl = pytest.importorskip("trl")

PAIRS = [
    {"messages": [{"role": "user", "content": "write a short poem about the sea"}],
     "chosen": "the sea is blue , the sky is blue .", "rejected": "no"},
    {"messages": [{"role": "user", "content": "list three fruits"}],
     "chosen": "apple , banana , cherry", "rejected": "the quick brown fox jumps over the lazy dog ."},
    {"messages": [{"role": "user", "content": "what is two plus two ?"}], "chosen": "four .",
     "rejected": "two plus two is five , or maybe three"},
]






def _close(a: float, b: float, tol: float = 1e-5) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


def _encoded(tok):
    enc = [(encode(tok, p["messages"], p["chosen"], 512, 512), encode(tok, p["messages"], p["rejected"], 512, 512))
           for p in PAIRS]
    chosen = [c for c, _ in enc]
    rejected = [(c[0], r[1]) for c, r in enc]
    return chosen, rejected


def _trl_trainer(model, tok, tmp_path, loss_types, weights=None, peft_config=None):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, loss_type=loss_types, loss_weights=weights,
                     per_device_train_batch_size=len(PAIRS), bf16=False, gradient_checkpointing=False,
                     report_to=[], use_cpu=True, max_length=None, disable_tqdm=True)
    dummy = Dataset.from_list([{"prompt": [{"role": "user", "content": "hi"}],
                                "chosen": [{"role": "assistant", "content": "a"}],
                                "rejected": [{"role": "assistant", "content": "b"}]}])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DPOTrainer(model=model, args=args, train_dataset=dummy, processing_class=tok,
                          peft_config=peft_config)


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _compare(ours_loss, trl_loss, ours_grads, trl_grads):
    assert _close(ours_loss.item(), trl_loss.item()), (ours_loss.item(), trl_loss.item())
    assert set(ours_grads) == set(trl_grads) and ours_grads
    worst = max((ours_grads[n] - trl_grads[n]).abs().max().item() for n in trl_grads)
    scale = max(trl_grads[n].abs().max().item() for n in trl_grads)
    assert scale > 1e-4, "gradients are trivially zero; the test would prove nothing"
    assert worst <= 1e-5 * max(1.0, scale), (worst, scale)


@pytest.mark.parametrize("loss,trl_losses,trl_weights,sft_weight,softcap,packed", [
    ("sigmoid", ["sigmoid"], None, 0.0, None, False),
    ("sigmoid", ["sigmoid"], None, 0.0, None, True),  # prompt shared by chosen and rejected
    ("ipo", ["ipo"], None, 0.0, None, False),
    ("hinge", ["hinge"], None, 0.0, None, True),
    ("sigmoid", ["sigmoid", "sft"], [1.0, 0.1], 0.1, None, True),  # SPaR's DPO + 0.1·SFT
    ("sigmoid", ["sigmoid"], None, 0.0, 0.5, False),  # final logit soft-capping (small cap: it must bite)
    ("sigmoid", ["sigmoid"], None, 0.0, 0.5, True),
])
def test_lora_loss_and_grads_match_trl(tiny_model, tmp_path, loss, trl_losses, trl_weights, sft_weight, softcap,
                                       packed):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok = load_tokenizer(tiny_model)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    base.config.final_logit_softcapping = softcap
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    trainer = _trl_trainer(base, tok, tmp_path, trl_losses, trl_weights, peft_config=lora)
    model = trainer.model
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(torch.randn_like(p) * 0.05)
    model.train()
    chosen, rejected = _encoded(tok)
    n = len(PAIRS)

    inputs = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(
        [{"prompt_ids": c[0], "chosen_ids": c[1], "rejected_ids": r[1]} for c, r in zip(chosen, rejected)])
    trl_loss = trainer.compute_loss(model, inputs)
    trl_loss.backward()
    trl_grads = _grads(model)

    scorer = Scorer(model, chunk=5)  # several chunks per batch
    with model.disable_adapter():
        ref = torch.tensor(score_all(scorer, chosen + rejected, tok.pad_token_id, "cpu", 2))
    if packed:
        batch = collate_pairs([(c[0], c[1], r[1]) for c, r in zip(chosen, rejected)], tok.pad_token_id)
    else:
        batch = collate(chosen + rejected, tok.pad_token_id)
    logp = score(scorer, batch)
    out = pair_losses(logp[:n], logp[n:], ref[:n], ref[n:], loss=loss, beta=0.1,
                      chosen_tokens=batch.n_tokens[:n], rejected_tokens=batch.n_tokens[n:])
    ours = out["losses"].mean()
    if sft_weight:
        ours = ours + sft_weight * sft_term(logp[:n], batch.n_tokens[:n].sum())
    ours.backward()
    _compare(ours, trl_loss, _grads(model), trl_grads)


def test_full_finetune_loss_and_grads_match_trl(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    tok = load_tokenizer(tiny_model)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trainer = _trl_trainer(policy, tok, tmp_path, ["sigmoid"])  # TRL loads its own reference copy
    torch.manual_seed(2)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    policy.train()
    chosen, rejected = _encoded(tok)
    n = len(PAIRS)
    inputs = DataCollatorForPreference(pad_token_id=tok.pad_token_id)(
        [{"prompt_ids": c[0], "chosen_ids": c[1], "rejected_ids": r[1]} for c, r in zip(chosen, rejected)])
    trl_loss = trainer.compute_loss(policy, inputs)
    trl_loss.backward()
    trl_grads = _grads(policy)

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ref = torch.tensor(score_all(Scorer(reference, 4), chosen + rejected, tok.pad_token_id, "cpu", 6))
    logp = score(Scorer(policy, chunk=4), collate(chosen + rejected, tok.pad_token_id))
    ours = pair_losses(logp[:n], logp[n:], ref[:n], ref[n:], loss="sigmoid", beta=0.1)["losses"].mean()
    ours.backward()
    grads = _grads(policy)
    assert "model.embed_tokens.weight" in grads  # the tied LM head is trained through our chunked head
    _compare(ours, trl_loss, grads, trl_grads)


def test_sft_loss_and_grads_match_causal_lm_cross_entropy(tiny_model):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.train()
    seqs, _ = _encoded(tok)
    width = max(len(p) + len(r) for p, r in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id)
    labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, (p, r) in enumerate(seqs):
        ids[b, : len(p) + len(r)] = torch.tensor(p + r)
        labels[b, len(p): len(p) + len(r)] = torch.tensor(r)
        mask[b, : len(p) + len(r)] = 1
    plain = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    plain.backward()
    plain_grads = _grads(model)

    batch = collate(seqs, tok.pad_token_id)
    ours = sft_term(score(Scorer(model, chunk=3), batch), batch.n_tokens.sum())
    ours.backward()
    _compare(ours, plain, _grads(model), plain_grads)


@pytest.mark.parametrize("window", [None, 3])
def test_packed_pairs_score_like_separate_sequences(tiny_model, window):
    """A shared prompt gives every chosen and rejected token the log-prob it has in its own sequence,
    also when a sliding-window layer's window (here 3 positions) is shorter than the sequences."""
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    if window:
        assert "sliding_attention" in model.config.layer_types  # else the window would test nothing
        model.config.sliding_window = window
    chosen, rejected = _encoded(tok)
    chosen.append((chosen[0][0], chosen[0][1][-1:]))  # a response that is only the end-of-turn token
    rejected.append((chosen[0][0], rejected[1][1]))
    scorer = Scorer(model, chunk=4)
    separate = score_all(scorer, chosen + rejected, tok.pad_token_id, "cpu", 3)
    packed = score_pairs_all(scorer, [(c[0], c[1], r[1]) for c, r in zip(chosen, rejected)], tok.pad_token_id,
                             "cpu", 3)
    n = len(chosen)
    for i, (c, r) in enumerate(packed):
        assert abs(c - separate[i]) < 1e-4 and abs(r - separate[n + i]) < 1e-4, (i, c, r, separate[i], separate[n + i])
