"""A recipe's read-only view of one round: what the round's stages wrote, as plain dicts.

The generic tasks build one inside their session and pass it to a recipe's hooks (pairs,
training job, stage planners), so a recipe reads a round through these few questions instead of
querying the database itself. Nothing here writes.
"""
from __future__ import annotations

from functools import cached_property

from sqlmodel import Session, select

from shared import crud
from shared.models import FINISH_AT_LIMIT, Judgment, ModelVersion, PreferencePair, Prompt, PromptSet, RefinementNode, Round, Run, Sample
from shared.versions import latest_role_version


def prompt_dict(p: Prompt) -> dict:
    return {"id": p.id, "prompt_set_id": p.prompt_set_id, "messages": p.messages, "reference": p.reference,
            "constraints": p.constraints, "answer": p.answer}


class RoundData:
    def __init__(self, session: Session, *, round_id: int):
        self._s = session
        self.round_id = round_id

    @cached_property
    def _round(self) -> Round:
        return self._s.get(Round, self.round_id)

    @cached_property
    def _run(self) -> Run:
        return self._s.get(Run, self._round.run_id)

    # ------------------------------------------------------------ where the round stands
    @property
    def run_id(self) -> int:
        return self._run.id

    @property
    def round_number(self) -> int:
        return self._round.number

    @property
    def total_rounds(self) -> int:
        """The run's number of rounds; 0 for a continuous run (no known last round)."""
        return 0 if self._run.continuous else self._run.rounds

    @property
    def prompt_set_ids(self) -> list[int]:
        """The run's training prompt sets."""
        return list(self._run.prompt_set_ids)

    @property
    def metrics(self) -> dict:
        return dict(self._round.metrics or {})

    @property
    def base_version_id(self) -> int | None:
        return self._run.base_version_id

    @property
    def policy(self) -> dict:
        """The round's policy θ(t-1): {"version_id", "adapter"} (adapter None when it is the base)."""
        v = self._s.get(ModelVersion, self._round.policy_version_id) if self._round.policy_version_id else None
        return {"version_id": self._round.policy_version_id,
                "adapter": v.uri if v is not None and v.kind == "adapter" else None}

    def latest_version(self, role: str) -> dict:
        """The newest version an earlier round trained for `role`, else the base: {"version_id", "adapter"}."""
        v = latest_role_version(self._s, workspace_id=self._run.workspace_id, run_id=self._run.id,
                                before_round=self.round_number, role=role)
        if v is None:
            return {"version_id": self._run.base_version_id, "adapter": None}
        return {"version_id": v.id, "adapter": v.uri if v.kind == "adapter" else None}

    def previous_round_id(self) -> int | None:
        return self._s.exec(select(Round.id).where(Round.run_id == self._run.id,
                                                   Round.number == self.round_number - 1)).first()

    # ------------------------------------------------------------ prompts
    def prompts(self, ids) -> dict[int, dict]:
        return {i: prompt_dict(p) for i, p in crud.prompts_by_id(self._s, ids=list(ids)).items()}

    def prompts_of_sets(self, set_ids) -> list[dict]:
        return [prompt_dict(p) for p in crud.prompts_of_sets(self._s, prompt_set_ids=list(set_ids))]

    def run_prompts(self) -> list[dict]:
        """The run's training prompts, in a stable order."""
        return self.prompts_of_sets(self._run.prompt_set_ids)

    def round_prompts(self) -> list[dict]:
        """Prompts this round wrote itself (e.g. self-instruction), in creation order."""
        return [prompt_dict(p) for p in crud.prompts_of_round(self._s, round_id=self.round_id)]

    def run_written_prompts(self) -> list[dict]:
        """Prompts any round of this run wrote itself."""
        sets = self._s.exec(select(PromptSet.id).where(PromptSet.source_round_id.in_(
            select(Round.id).where(Round.run_id == self._run.id)))).all()
        return self.prompts_of_sets(sets)

    # ------------------------------------------------------------ what the stages wrote
    def samples(self, role: str) -> list[dict]:
        """This round's samples of `role`, by prompt and index."""
        return [{"id": x.id, "prompt_id": x.prompt_id, "index": x.index, "text": x.text,
                 "finish_reason": x.finish_reason}
                for x in crud.samples_of_round(self._s, round_id=self.round_id, role=role)]

    def judgments(self, kind: str, role: str | None = None) -> list[dict]:
        """Judgments of `kind` on this round's samples (of `role`, when given), by sample and vote."""
        q = (select(Judgment).join(Sample, Sample.id == Judgment.sample_id)
             .where(Sample.round_id == self.round_id, Judgment.kind == kind))
        if role is not None:
            q = q.where(Sample.role == role)
        return [{"sample_id": j.sample_id, "vote_index": j.vote_index, "score": j.score, "passed": j.passed,
                 "rationale": j.rationale} for j in self._s.exec(q.order_by(Judgment.sample_id, Judgment.vote_index))]

    def refinement_trees(self) -> list[dict]:
        """One tree per searched sample of this round: the root sample (and whether it was cut at the
        token limit) and every node, in id order."""
        rows = self._s.exec(select(RefinementNode, Sample).join(Sample, Sample.id == RefinementNode.sample_id)
                            .where(Sample.round_id == self.round_id)
                            .order_by(RefinementNode.sample_id, RefinementNode.id)).all()
        trees: dict[int, dict] = {}
        for n, x in rows:
            tree = trees.setdefault(x.id, {"sample_id": x.id, "prompt_id": x.prompt_id, "sample_index": x.index,
                                           "root": x.text, "root_cut": x.finish_reason == FINISH_AT_LIMIT,
                                           "nodes": []})
            tree["nodes"].append({"id": n.id, "path": n.path, "parent_path": n.parent_path, "depth": n.depth,
                                  "text": n.text, "passed": n.passed, "judgment": n.judgment})
        return list(trees.values())

    def pairs(self, round_ids) -> list[dict]:
        """Stored preference pairs of these rounds as training items {"messages", "chosen", "rejected",
        "chosen_ended", "rejected_ended"}: a side is not ended when it is the text of one of these
        rounds' samples of its prompt that was cut at the token limit (finish_reason "length"), so the
        trainer scores no end-of-turn the model never wrote."""
        ids = list(round_ids)
        rows = self._s.exec(select(PreferencePair, Prompt).join(Prompt, Prompt.id == PreferencePair.prompt_id)
                            .where(PreferencePair.round_id.in_(ids))
                            .order_by(PreferencePair.round_id, PreferencePair.prompt_id, PreferencePair.index)).all()
        cut = set(self._s.exec(select(Sample.prompt_id, Sample.text)
                               .where(Sample.round_id.in_(ids), Sample.finish_reason == FINISH_AT_LIMIT)).all())
        return [{"messages": p.messages, "chosen": pp.chosen, "rejected": pp.rejected,
                 "chosen_ended": (pp.prompt_id, pp.chosen) not in cut,
                 "rejected_ended": (pp.prompt_id, pp.rejected) not in cut} for pp, p in rows]
