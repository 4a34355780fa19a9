"""What one training task does, as a recipe assembles it: the data, the trainer settings, where
training starts, the reference model and where the result is published."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainJob:
    kind: str  # pairs ({"messages", "chosen", "rejected"}) | sft ({"messages", "response"})
    items: list[dict]
    tcfg: object  # a services.training.config.TrainConfig
    key_round: int  # round number in the version key (0 = a bootstrap before round 1)
    role: str  # the version's role: policy | refiner | ...
    init_adapter: str | None = None  # the adapter training starts from (None: a fresh one on the base)
    ref_adapter: str | None = None  # the pairwise reference's adapter (None: the base)
    parent_id: int | None = None  # the ModelVersion this one derives from
    stats: dict = field(default_factory=dict)  # counts about the data, kept in the version's metrics
    sets_policy: bool = False  # the version becomes this round's policy (e.g. Self-Rewarding's M1)
    label: str | None = None  # where its metrics live on the round (default: see metrics_label)

    def __post_init__(self) -> None:
        if self.kind not in ("pairs", "sft"):
            raise ValueError(f"TrainJob.kind must be 'pairs' or 'sft', got {self.kind!r}")


def metrics_label(job: TrainJob) -> str:
    """Where a job's metrics live on the round."""
    if job.label:
        return job.label
    if job.sets_policy:
        return "bootstrap"
    return "train" if job.role == "policy" else f"train_{job.role}"
