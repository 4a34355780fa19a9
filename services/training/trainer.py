"""SFT and pairwise (SPIN / DPO / IPO / hinge) training of a LoRA adapter or a full model.

train_pairs, train_sft and sequence_logprobs take plain data (chats and strings) and write an
adapter directory; they never touch the database. What makes them fast (see logprobs.py): response
positions only go through the 262k-wide LM head, chunked; reference log-probs are computed once,
before training, by the same model (no second model, no reference forward per step); chosen and
rejected share one forward; batches group similar lengths.

Reference: ref_adapter's weights, or the bare base (no adapter). It is scored before the policy is
built: the base is wrapped with the reference adapter, scored, and unwrapped again (peft `unload`),
then the policy adapter goes on — init_adapter's weights (kept training), or a fresh LoRA.

Resumable: every `checkpoint_every` optimizer steps, the trainable weights, optimizer, scheduler,
RNG, step, data order, reference log-probs and metric history go to checkpoint_dir/step-N,
written into a temporary directory and renamed into place. Calling again with the same inputs and
checkpoint_dir resumes from the newest checkpoint; a checkpoint of other inputs is ignored.

Distributed: with several GPUs (or config.distributed set) train_* re-runs itself under
`accelerate launch` (launch.py); inside, accelerate's Accelerator does backward, no_sync, clipping
and gathering, each process takes its share of every optimizer step's micro-batches, and the loss
is normalised by the global step size so N processes compute the same update as one.
Guards (pairwise only): each step's forward already has the policy's and the reference's log-probs
of the step's pairs, so before the update the trainer checks an estimate of KL(reference || policy)
per token on the rejected responses and the mean reward margin against `max_kl` and
`max_reward_margin`. The weights measured by a step come from the previous update, so on a breach
the trainer restores the trainable weights of the last step that measured within bounds (kept as an
in-memory copy: LoRA weights are a few MB), stops, and reports `guard_stop` (step, metric, value,
ceiling, kept_updates) in its summary. A breach at the first step means the reference itself is out of bounds
(nothing was trained yet): the untouched initial weights are kept.
Left out: gradient checkpointing (activations of short chat sequences are small next to the LM
head's chunk), packing, mixed-precision autocast (the base runs in bf16 on GPU, LoRA in float32).
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import math
import os
import random
import shutil
import uuid
import time
from collections.abc import Callable
from pathlib import Path

import torch

from services.training.config import TrainConfig
from services.training.logprobs import (
    Scorer,
    can_pack,
    collate,
    collate_pairs,
    encode,
    length_batches,
    score,
    score_all,
    score_pairs_all,
)
from services.training.losses import pair_losses, sft_term
from shared.config import world_size
from shared.modeling import borrow_base, default_dtype, give_back_base, load_base, load_tokenizer, pick_device

log = logging.getLogger(__name__)
OnStep = Callable[[dict], None]


def train_pairs(*, base_model: str, pairs: list[dict], out_dir: str | Path, config: TrainConfig,
                init_adapter: str | None = None, ref_adapter: str | None = None,
                checkpoint_dir: str | Path | None = None, on_step: OnStep | None = None) -> dict:
    """Pairwise training on [{"messages", "chosen", "rejected"}]; writes the adapter to out_dir."""
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or not {"messages", "chosen", "rejected"} <= set(p):
            raise ValueError(f"pair {i} must be a dict with messages, chosen and rejected; got {p!r:.200}")
    return _dispatch("pairs", base_model, pairs, out_dir, config, init_adapter, ref_adapter,
                     checkpoint_dir, on_step)


def train_sft(*, base_model: str, examples: list[dict], out_dir: str | Path, config: TrainConfig,
              init_adapter: str | None = None, checkpoint_dir: str | Path | None = None,
              on_step: OnStep | None = None) -> dict:
    """Cross-entropy on response tokens of [{"messages", "response"}]; writes the adapter to out_dir."""
    for i, e in enumerate(examples):
        if not isinstance(e, dict) or not {"messages", "response"} <= set(e):
            raise ValueError(f"example {i} must be a dict with messages and response; got {e!r:.200}")
    return _dispatch("sft", base_model, examples, out_dir, config, init_adapter, None,
                     checkpoint_dir, on_step)


def pair_ends(pair: dict, config: TrainConfig) -> tuple[bool, bool]:
    """Whether the chosen and the rejected response of a pair are scored with their end-of-turn: a
    response cut at the generation limit never ended (`chosen_ended` / `rejected_ended` False), and
    config.score_rejected_end False scores no rejected response's end (a share: that share of them,
    each pair's lot fixed by a hash of the pair and the seed). Training and every margin measured on
    the pairs encode them alike."""
    chosen, share = pair.get("chosen_ended", True), config.score_rejected_end
    if not pair.get("rejected_ended", True) or share is False or share <= 0:
        return chosen, False
    if share is True or share >= 1:
        return chosen, True
    key = json.dumps([pair["messages"], pair["rejected"], config.seed], sort_keys=True).encode()
    return chosen, int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64 < share


def sequence_logprobs(*, base_model: str, adapter: str | None, examples: list[dict],
                      config: TrainConfig | None = None) -> list[float]:
    """Sum of response-token log-probs of each {"messages", "response"[, "ended"]} under
    base(+adapter); `ended` False scores the response without an end-of-turn (default True)."""
    config = config or TrainConfig()
    tok = load_tokenizer(base_model)
    seqs = [encode(tok, e["messages"], e["response"], config.max_prompt_tokens, config.max_response_tokens,
                   ended=e.get("ended", True)) for e in examples]
    if adapter is None:
        model = load_base(base_model, config.device)  # shared read-only copy
    else:
        from peft import PeftModel

        # A private copy: peft injects its layers into the model it wraps.
        model = PeftModel.from_pretrained(borrow_base(base_model, config.device), str(adapter))
        model.eval()
    dev = next(model.parameters()).device
    values = score_all(Scorer(model, config.logprob_chunk), seqs, tok.pad_token_id, dev, 2 * config.batch_size)
    if adapter is not None:
        give_back_base(base_model, model.unload(), config.device)
    return values


def _dispatch(kind, base_model, items, out_dir, config, init_adapter, ref_adapter, checkpoint_dir, on_step):
    from services.training import launch

    if not items:
        raise ValueError(f"no training data: train_{kind} needs at least one item")
    if launch.should_launch(config):
        return launch.run_distributed(kind=kind, base_model=base_model, items=items, out_dir=out_dir,
                                      config=config, init_adapter=init_adapter, ref_adapter=ref_adapter,
                                      checkpoint_dir=checkpoint_dir, on_step=on_step)
    return _train(kind, base_model, items, Path(out_dir), config, init_adapter, ref_adapter,
                  Path(checkpoint_dir) if checkpoint_dir else None, on_step)


class _Solo:
    """The parts of accelerate.Accelerator the loop uses, for one process (no global state)."""
    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self, device):
        self.device = device

    def prepare(self, *objs):
        return objs

    def no_sync(self, model):
        return contextlib.nullcontext()

    def backward(self, loss):
        loss.backward()

    def clip_grad_norm_(self, params, max_norm):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def wait_for_everyone(self):
        pass

    def unwrap_model(self, model):
        return model


def _accelerator(config: TrainConfig):
    if world_size() > 1:
        from accelerate import Accelerator

        return Accelerator(cpu=config.device == "cpu" or not torch.cuda.is_available())
    return _Solo(pick_device(config.device))


def _gather_list(acc, values: list) -> list:
    if acc.num_processes == 1:
        return values
    from accelerate.utils import gather_object

    return gather_object(values)


def _train(kind, base_model, items, out_dir: Path, config: TrainConfig, init_adapter, ref_adapter,
           checkpoint_dir: Path | None, on_step) -> dict:
    t0 = time.monotonic()
    acc = _accelerator(config)
    world, rank, dev = acc.num_processes, acc.process_index, acc.device
    tok = load_tokenizer(base_model)
    pad = tok.pad_token_id
    cut = (config.max_prompt_tokens, config.max_response_tokens)
    if kind == "pairs":
        enc = [tuple(encode(tok, p["messages"], p[side], *cut, ended=end)
                     for side, end in zip(("chosen", "rejected"), pair_ends(p, config)))
               for p in items]
        data = [(c[0], c[1], r[1]) for c, r in enc]  # (prompt, chosen, rejected)
        lengths = [2 * len(p) + len(c) + len(r) for p, c, r in data]
    else:
        data = [encode(tok, e["messages"], e["response"], *cut, ended=e.get("ended", True)) for e in items]
        lengths = [len(p) + len(r) for p, r in data]
    fingerprint = hashlib.sha256(json.dumps(
        [kind, base_model, init_adapter, ref_adapter, data,
         {k: v for k, v in config.to_dict().items() if k not in ("checkpoint_every", "device")}]
    ).encode()).hexdigest()
    state = _load_checkpoint(checkpoint_dir, fingerprint) if checkpoint_dir else None

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    base = borrow_base(base_model, str(dev), default_dtype(dev))  # a spare from an earlier task, else loaded
    base.config.use_cache = False
    ref = None
    packed = kind == "pairs" and config.share_prompt and can_pack(base)
    if kind == "pairs":
        ref = state["ref"] if state else _reference_logps(acc, base, data, ref_adapter, pad, config, packed)
    model = _policy(base, config, init_adapter)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)

    order = state["order"] if state else [length_batches(lengths, config.batch_size, config.seed + e)
                                          for e in range(config.epochs)]
    steps = []  # (epoch, micro-batches of one optimizer step, across all processes)
    for e, batches in enumerate(order):
        batches = batches + batches[: (-len(batches)) % world]  # equal shares (DistributedSampler-style)
        group = config.grad_accum * world
        steps += [(e, batches[s: s + group]) for s in range(0, len(batches), group)]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, len(steps)))
    scorer = Scorer(model, config.logprob_chunk)
    scorer, optimizer = acc.prepare(scorer, optimizer)
    if kind == "pairs":  # the rows one item puts through the body: (count, tokens of the longest)
        row_len = [(1, len(p) + len(c) + len(r) - 2) if packed else (2, len(p) + max(len(c), len(r)) - 1)
                   for p, c, r in data]
    else:
        row_len = [(1, len(p) + len(r) - 1) for p, r in data]

    start, history = 0, []
    if state:
        start, history = state["step"], state["history"]
        missing = set(state["trainable"]) - {n for n, _ in model.named_parameters()}
        if missing:
            raise ValueError(f"checkpoint in {checkpoint_dir} does not fit this model: {sorted(missing)[:3]}")
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng(state["rng"])
        log.info("resuming %s training from step %d of %d", kind, start, len(steps))

    ref_t = torch.tensor(ref, dtype=torch.float32) if ref is not None else None
    sft_coef = 1.0 if config.loss == "sft" else config.sft_weight
    scorer.train()
    trained_items = 0
    guarded = kind == "pairs" and (config.max_kl > 0 or config.max_reward_margin > 0)
    good_state, good_step, guard_stop = (_snapshot(model) if guarded else None), start, None
    for step in range(start, len(steps)):
        t_step = time.monotonic()
        epoch, group = steps[step]
        n_items = sum(len(b) for b in group)
        n_tok = sum(len(data[i][1]) for b in group for i in b)  # chosen / response tokens (SFT term)
        mine = group[rank::world]
        # loss, chosen, rejected, margin, correct, tokens, KL estimate on rejected (per token)
        totals = torch.zeros(7, dtype=torch.float64)
        pieces = [piece for idx in mine for piece in _split_by_tokens(idx, row_len, config.forward_tokens)]
        for j, idx in enumerate(pieces):
            sync = acc.no_sync(scorer) if j < len(pieces) - 1 else contextlib.nullcontext()
            with sync:
                if kind == "pairs":
                    if packed:
                        batch = collate_pairs([data[i] for i in idx], pad).to(dev)
                    else:
                        batch = collate([(data[i][0], data[i][1]) for i in idx] +
                                        [(data[i][0], data[i][2]) for i in idx], pad).to(dev)
                    logp = score(scorer, batch)
                    b = len(idx)
                    out = pair_losses(logp[:b], logp[b:], ref_t[idx, 0].to(dev), ref_t[idx, 1].to(dev),
                                      loss=config.loss, beta=config.beta,
                                      chosen_tokens=batch.n_tokens[:b], rejected_tokens=batch.n_tokens[b:])
                    loss = out["losses"].sum() / n_items
                    if sft_coef:
                        loss = loss + sft_coef * sft_term(logp[:b], n_tok)
                    cr, rr = out["chosen_rewards"].double().cpu(), out["rejected_rewards"].double().cpu()
                    totals[1:5] += torch.stack([cr.sum(), rr.sum(), (cr - rr).sum(), (cr > rr).double().sum()])
                    kl = (ref_t[idx, 1].to(dev) - logp[b:].detach()) / batch.n_tokens[b:].clamp(min=1)
                    totals[6] += kl.double().sum().cpu()
                else:
                    batch = collate([data[i] for i in idx], pad).to(dev)
                    loss = sft_term(score(scorer, batch), n_tok)
                totals[0] += loss.item()
                totals[5] += sum(lengths[i] for i in idx)
                acc.backward(loss * world)  # DDP averages gradients over processes
        totals = acc.reduce(totals.to(dev), reduction="sum").cpu()  # before the update: the guard needs it
        breach = _guard_breach(kind, config, totals, n_items)
        if breach is not None:
            guard_stop = {"step": step + 1, **breach}
            log.warning("training guard: %s = %.4g above its ceiling %.4g at step %d; keeping the weights "
                        "after %d updates and stopping", breach["metric"], breach["value"], breach["ceiling"],
                        step + 1, good_step)
            _restore(model, good_state)
            optimizer.zero_grad(set_to_none=True)
            break
        if good_state is not None:
            good_state, good_step = _snapshot(model), step  # measured within bounds just now
        if config.max_grad_norm > 0:
            acc.clip_grad_norm_(params, config.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cpu":
            _trim_heap()
        trained_items += n_items
        metrics = {"step": step + 1, "epoch": epoch + 1, "loss": totals[0].item(), "lr": lr,
                   "tokens_per_s": totals[5].item() / max(time.monotonic() - t_step, 1e-9)}
        if kind == "pairs":
            metrics.update(chosen_reward=totals[1].item() / n_items, rejected_reward=totals[2].item() / n_items,
                           margin=totals[3].item() / n_items, accuracy=totals[4].item() / n_items,
                           kl=totals[6].item() / n_items)
        else:
            metrics.update(chosen_reward=None, rejected_reward=None, margin=None, accuracy=None)
        history.append(metrics)
        if checkpoint_dir and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 \
                and step + 1 < len(steps):
            _save_checkpoint(acc, checkpoint_dir, model, {
                "fingerprint": fingerprint, "step": step + 1, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": _get_rng(), "order": order, "ref": ref,
                "history": history})
        if on_step is not None and acc.is_main_process:
            on_step(dict(metrics))

    after = None
    if kind == "pairs":  # the trained policy's margin on its pairs, in the layout training used
        after = _pair_logps(acc, acc.unwrap_model(scorer).model, data, pad, config, packed)
    if acc.is_main_process:
        _publish(acc.unwrap_model(scorer).model, tok, out_dir, lora=config.lora)
    acc.wait_for_everyone()
    if config.lora:  # LoRA left the base weights as they were: keep the bare base for the next task
        give_back_base(base_model, acc.unwrap_model(scorer).model.unload(), str(dev), default_dtype(dev))
    seconds = time.monotonic() - t0
    summary = _summary(kind, history, steps, trained_items, seconds, start, lengths)
    if ref is not None:  # mean log π(chosen) − log π(rejected) under the reference (the margin before
        summary["reference_margin"] = sum(c - r for c, r in ref) / len(ref)  # training when it is the start)
        summary["policy_margin"] = sum(c - r for c, r in after) / len(after)  # and under the trained policy
    if guard_stop is not None:
        summary["guard_stop"] = {**guard_stop, "kept_updates": good_step}
    return summary


def _split_by_tokens(idx: list[int], row_len: list[tuple[int, int]], budget: int) -> list[list[int]]:
    """Cut one batch into consecutive pieces whose padded size (rows x the longest row) stays within
    `budget` token positions; a piece holds at least one item. 0 = no cut."""
    if budget <= 0:
        return [idx]
    pieces, piece, rows, width = [], [], 0, 0
    for i in sorted(idx, key=lambda i: row_len[i][1]):
        n, w = row_len[i]
        if piece and (rows + n) * max(width, w) > budget:
            pieces.append(piece)
            piece, rows, width = [], 0, 0
        piece.append(i)
        rows, width = rows + n, max(width, w)
    return pieces + [piece]


def _guard_breach(kind: str, config: TrainConfig, totals: torch.Tensor, n_items: int) -> dict | None:
    """The first guard this step's measurements exceed, or None."""
    if kind != "pairs":
        return None
    for metric, value, ceiling in (("kl", totals[6].item() / n_items, config.max_kl),
                                   ("reward_margin", totals[3].item() / n_items, config.max_reward_margin)):
        if ceiling > 0 and not value <= ceiling:  # NaN breaches too
            return {"metric": metric, "value": value, "ceiling": ceiling}
    return None


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model, state: dict[str, torch.Tensor] | None) -> None:
    if state is None:
        return
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def _reference_logps(acc, base, data, ref_adapter, pad, config, packed: bool) -> list[list[float]]:
    """[[log πref(chosen), log πref(rejected)] per pair], each process scoring its share."""
    model = base
    if ref_adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(ref_adapter), adapter_name="reference")
    values = _pair_logps(acc, model, data, pad, config, packed)
    if ref_adapter is not None:
        model.unload()  # back to the bare base, in place
    return values


def _pair_logps(acc, model, data, pad, config, packed: bool) -> list[list[float]]:
    """[[log π(chosen), log π(rejected)] per pair] under `model` in eval mode, no gradients, each
    process scoring its share (gathered on every process)."""
    was_training = model.training
    model.eval()
    mine = list(range(acc.process_index, len(data), acc.num_processes))
    scorer = Scorer(model, config.logprob_chunk)
    if packed:  # both scorers run without gradients
        values = [v for pair in score_pairs_all(scorer, [data[i] for i in mine], pad, acc.device, config.batch_size)
                  for v in pair]
    else:
        seqs = [(data[i][0], data[i][k]) for i in mine for k in (1, 2)]
        values = score_all(scorer, seqs, pad, acc.device, 2 * config.batch_size)
    model.train(was_training)
    found = dict(_gather_list(acc, [(i, values[2 * j: 2 * j + 2]) for j, i in enumerate(mine)]))
    return [found[i] for i in range(len(data))]


def _policy(base, config: TrainConfig, init_adapter: str | None):
    from peft import LoraConfig, PeftModel, get_peft_model

    if config.lora:
        if init_adapter is not None:
            model = PeftModel.from_pretrained(base, str(init_adapter), is_trainable=True)
        else:
            torch.manual_seed(config.seed)  # LoRA's A matrices are random
            model = get_peft_model(base, LoraConfig(
                r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM"))
        return model
    if init_adapter is not None:
        base = PeftModel.from_pretrained(base, str(init_adapter)).merge_and_unload()
    base.requires_grad_(True)
    return base


def _schedule(config: TrainConfig, total: int):
    warmup = math.ceil(config.warmup_ratio * total)

    def factor(step: int) -> float:
        # Warm-up climbs (step + 1) / (warmup + 1): the first step already moves the weights. The
        # common step / warmup makes step 0 a step at lr 0, which on a round of a handful of pairs
        # (SPaR's 6 pairs: 2 steps) threw away half the training.
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        floor = config.final_lr_ratio  # decay to learning_rate * final_lr_ratio, not to 0
        if config.schedule == "cosine":
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return floor + (1.0 - floor) * (1.0 - progress)

    return factor


def _summary(kind, history, steps, trained_items, seconds, start, lengths) -> dict:
    last_epoch = steps[-1][0] + 1
    tail = [m for m in history if m["epoch"] == last_epoch] or history
    mean = lambda key: sum(m[key] for m in tail) / len(tail) if tail and tail[0][key] is not None else None
    tokens = sum(lengths[i] for _, g in steps[start:] for b in g for i in b)
    out = {"loss": mean("loss"), "steps": len(steps), "seconds": seconds, "resumed_from_step": start,
           "tokens_per_s": tokens / seconds}
    if kind == "pairs":
        out.update(reward_margin=mean("margin"), reward_accuracy=mean("accuracy"),
                   chosen_reward=mean("chosen_reward"), rejected_reward=mean("rejected_reward"),
                   pairs_per_s=trained_items / seconds)
    else:
        out["examples_per_s"] = trained_items / seconds
    return out


def _trim_heap() -> None:
    """Hand the heap's free pages back to the OS (glibc malloc_trim) after an optimizer step.

    glibc raises its mmap threshold up to 32 MiB as big blocks are freed, after which a step's
    activations (10-20 MiB tensors for Gemma 3 270M) come from the heap and, once freed, stay
    resident and fragmented: we measured RSS growing 4 -> 6 -> 8 GiB over the first steps. Trimming
    once per step keeps the peak at one step's worth; within a step freed blocks are still reused
    (unlike a low mmap threshold, which cost ~15 % more CPU in page faults)."""
    if _libc is not None:
        _libc.malloc_trim(0)


try:
    _libc = ctypes.CDLL("libc.so.6")
    _libc.malloc_trim  # noqa: B018 - not glibc: no trimming
except (OSError, AttributeError):
    _libc = None


# --- checkpoints and publishing ------------------------------------------------------------------

def _get_rng() -> dict:
    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _save_checkpoint(acc, directory: Path, model, state: dict) -> None:
    acc.wait_for_everyone()
    if acc.is_main_process:
        trainable = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".tmp-step-{state['step']:07d}-{uuid.uuid4().hex[:12]}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save({**state, "trainable": trainable}, tmp / "state.pt")
        final = directory / f"step-{state['step']:07d}"
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)  # atomic: a step-N directory is always complete
        for old in directory.iterdir():  # keep only the newest
            if old != final and (old.name.startswith("step-") or old.name.startswith(".tmp-")):
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def _load_checkpoint(directory: Path, fingerprint: str) -> dict | None:
    found = sorted(directory.glob("step-*/state.pt")) if directory.exists() else []
    if not found:
        return None
    # weights_only=False: we wrote this file ourselves (it holds Python RNG state and the data order).
    state = torch.load(found[-1], map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s: it belongs to other data, model or config", found[-1].parent)
        return None
    return state


def _publish(model, tokenizer, out_dir: Path, *, lora: bool) -> None:
    """Write the adapter (or full model) next to out_dir, then rename it into place."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    if not lora:
        tokenizer.save_pretrained(tmp)
    old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:12]}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)
