"""A response cut at the generation limit never ended: the trainer scores it without an end-of-turn
token. Scoring one would make a cut rejected answer's "end here" the thing DPO pushes down, which
teaches the policy not to end (held-out answers cut at the limit rose after every Self-Rewarding
round that trained on cut rejected answers, docs/results.md)."""
from __future__ import annotations

import pytest
from sqlmodel import Session, SQLModel

from services.training import trainer
from services.training.config import TrainConfig
from services.training.logprobs import encode
from shared.db import make_engine
from shared.modeling import end_of_turn_ids, load_tokenizer
from shared.models import PreferencePair, Prompt, PromptSet, Round, Run, Sample, Workspace
from shared.round_data import RoundData


def test_encode_appends_the_end_of_turn_only_to_a_response_that_ended(tiny_model):
    tok = load_tokenizer(tiny_model)
    msgs = [{"role": "user", "content": "say something"}]
    _, ended = encode(tok, msgs, "a b c", 64, 64)
    _, cut = encode(tok, msgs, "a b c", 64, 64, ended=False)
    assert ended == cut + end_of_turn_ids(tok)[:1] and end_of_turn_ids(tok)[0] not in cut


def test_round_pairs_mark_the_sides_that_were_cut(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as s:
        ws = Workspace(name="w")
        s.add(ws)
        s.flush()
        ps = PromptSet(workspace_id=ws.id, name="p")
        s.add(ps)
        s.flush()
        p1, p2 = (Prompt(prompt_set_id=ps.id, position=i, messages=[{"role": "user", "content": f"q{i}"}])
                  for i in range(2))
        s.add_all([p1, p2])
        s.flush()
        run = Run(workspace_id=ws.id, method="self_reward", base_model="tiny", prompt_set_ids=[ps.id], config={})
        s.add(run)
        s.flush()
        rnd = Round(run_id=run.id, number=1)
        s.add(rnd)
        s.flush()
        # prompt 1: the rejected answer ran into the limit; prompt 2: the same text ended for p2, and
        # a cut answer of p1 with the chosen text of p2 does not make p2's chosen cut
        s.add_all([Sample(round_id=rnd.id, prompt_id=p1.id, index=0, role="candidate", text="good", finish_reason="stop"),
                   Sample(round_id=rnd.id, prompt_id=p1.id, index=1, role="candidate", text="runs on and on",
                          finish_reason="length"),
                   Sample(round_id=rnd.id, prompt_id=p1.id, index=2, role="candidate", text="fine", finish_reason="length"),
                   Sample(round_id=rnd.id, prompt_id=p2.id, index=0, role="candidate", text="fine", finish_reason="stop"),
                   Sample(round_id=rnd.id, prompt_id=p2.id, index=1, role="candidate", text="bad", finish_reason="stop")])
        s.add_all([PreferencePair(round_id=rnd.id, prompt_id=p1.id, source="judge_best_worst", chosen="good",
                                  rejected="runs on and on"),
                   PreferencePair(round_id=rnd.id, prompt_id=p2.id, source="judge_best_worst", chosen="fine",
                                  rejected="bad"),
                   PreferencePair(round_id=rnd.id, prompt_id=p2.id, source="gold_vs_generated", chosen="a gold answer",
                                  rejected="bad")])
        s.flush()
        pairs = RoundData(s, round_id=rnd.id).pairs([rnd.id])
    assert sorted((p["chosen"], p["chosen_ended"], p["rejected"], p["rejected_ended"]) for p in pairs) == [
        ("a gold answer", True, "bad", True), ("fine", True, "bad", True), ("good", True, "runs on and on", False)]


def encoded_sides(tiny_model, out_dir, monkeypatch, pairs, **config) -> list[tuple[str, bool]]:
    """(response, ended) for each side the trainer encoded, in order."""
    seen = []
    real = trainer.encode

    def spy(tok, messages, response, max_prompt, max_response, ended=True):
        seen.append((response, ended))
        return real(tok, messages, response, max_prompt, max_response, ended)

    monkeypatch.setattr(trainer, "encode", spy)
    trainer.train_pairs(base_model=tiny_model, pairs=pairs, out_dir=out_dir,
                        config=TrainConfig(epochs=1, batch_size=2, lora_r=2, lora_alpha=4, **config))
    return seen


MSGS = [{"role": "user", "content": "q"}]


def test_the_trainer_encodes_each_side_as_it_ended(tiny_model, tmp_path, monkeypatch):
    pairs = [{"messages": MSGS, "chosen": "yes it is", "rejected": "no no no no", "rejected_ended": False},
             {"messages": MSGS, "chosen": "sure", "rejected": "never"}]
    seen = encoded_sides(tiny_model, tmp_path / "a", monkeypatch, pairs)
    assert seen[:4] == [("yes it is", True), ("no no no no", False), ("sure", True), ("never", True)]


def test_rejected_ends_can_be_left_unscored(tiny_model, tmp_path, monkeypatch):
    """score_rejected_end False: no rejected response is scored with its end-of-turn, chosen ones are."""
    pairs = [{"messages": MSGS, "chosen": "yes it is", "rejected": "no no no no", "chosen_ended": True},
             {"messages": MSGS, "chosen": "sure", "rejected": "never", "rejected_ended": True}]
    seen = encoded_sides(tiny_model, tmp_path / "a", monkeypatch, pairs, score_rejected_end=False)
    assert seen[:4] == [("yes it is", True), ("no no no no", False), ("sure", True), ("never", False)]
    with pytest.raises(ValueError, match="score_rejected_end"):
        TrainConfig(score_rejected_end="no")
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="score_rejected_end"):
            TrainConfig(score_rejected_end=bad)


def test_a_share_of_rejected_ends_is_scored_the_same_way_in_every_pass():
    """score_rejected_end 0.5: about half the rejected answers that ended are scored with their end,
    each pair's lot fixed (the reference pass, training and the margins see the same encoding); a
    cut answer is never scored with one; 0 and 1 are false and true."""
    pairs = [{"messages": [{"role": "user", "content": f"q{i}"}], "chosen": "c", "rejected": f"r{i}"}
             for i in range(400)]
    half = TrainConfig(score_rejected_end=0.5)
    lots = [trainer.pair_ends(p, half)[1] for p in pairs]
    assert 160 < sum(lots) < 240 and lots == [trainer.pair_ends(p, half)[1] for p in pairs]
    assert all(trainer.pair_ends(p, half)[0] for p in pairs)  # chosen ends are always scored
    other_seed = [trainer.pair_ends(p, TrainConfig(score_rejected_end=0.5, seed=1))[1] for p in pairs]
    assert other_seed != lots
    quarter = [trainer.pair_ends(p, TrainConfig(score_rejected_end=0.25))[1] for p in pairs]
    assert 60 < sum(quarter) < 140
    assert not any(trainer.pair_ends({**p, "rejected_ended": False}, half)[1] for p in pairs)
    assert [trainer.pair_ends(p, TrainConfig(score_rejected_end=0.0))[1] for p in pairs[:5]] == [False] * 5
    assert [trainer.pair_ends(p, TrainConfig(score_rejected_end=1))[1] for p in pairs[:5]] == [True] * 5


def test_margins_are_measured_as_training_encodes_each_side(tiny_model, tmp_path):
    """The round's `logp_margin_before` comes from the trainer's own reference pass (the reference is
    the start) and `logp_margin_after` from a last pass of the trained policy, and every margin scores
    a side as training does: a cut side without its end-of-turn."""
    from services.training.tasks import _mean_margin

    pairs = [{"messages": MSGS, "chosen": "yes it is", "rejected": "no no no no", "rejected_ended": False},
             {"messages": MSGS, "chosen": "sure", "rejected": "never"}]
    cfg = TrainConfig(epochs=1, batch_size=2, lora_r=4, lora_alpha=8, learning_rate=1e-3)
    summary = trainer.train_pairs(base_model=tiny_model, pairs=pairs, out_dir=tmp_path / "out", config=cfg)
    before = _mean_margin(tiny_model, None, pairs, cfg)
    assert summary["reference_margin"] == pytest.approx(before, abs=1e-4)
    # and `logp_margin_after` from the trainer's last pass, the trained adapter as published
    after = _mean_margin(tiny_model, str(tmp_path / "out"), pairs, cfg)
    assert summary["policy_margin"] == pytest.approx(after, abs=1e-4) and after != pytest.approx(before, abs=1e-3)

    lp = lambda response, ended: trainer.sequence_logprobs(  # noqa: E731
        base_model=tiny_model, adapter=None, examples=[{"messages": MSGS, "response": response, "ended": ended}])[0]
    expected = ((lp("yes it is", True) - lp("no no no no", False)) + (lp("sure", True) - lp("never", True))) / 2
    assert before == pytest.approx(expected, abs=1e-5)
    assert lp("no no no no", False) != pytest.approx(lp("no no no no", True), abs=1e-3)  # the end-of-turn counts
