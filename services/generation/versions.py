"""Which model a stage samples from, as a ModelRef. A stage's payload names it ("model"):

- "policy": θ(t-1), the round's policy;
- "produced": the version this round trained (evaluation's "after"; the policy when the round
  trained nothing);
- "base": θ0, the run's base (evaluation's "before");
- "role:<name>": the newest version an earlier round of the run trained for that role (e.g. a
  refiner), else the base;
- "version:<id>": a given version of the run's workspace (e.g. a fixed judge).
"""
from __future__ import annotations

from services.generation.base import ModelRef
from shared.db import session_scope
from shared.models import ModelVersion, Round, Run
from shared.stages import StageContext
from shared.versions import latest_role_version


def version_ref(version: ModelVersion) -> ModelRef:
    return ModelRef(base_model=version.base_model,
                    adapter_path=version.uri if version.kind == "adapter" else None, version_id=version.id)


def model_for(ctx: StageContext, which: str) -> ModelRef:
    policy = ModelRef(base_model=ctx.base_model, adapter_path=ctx.policy_adapter, version_id=ctx.policy_version_id)
    if which == "policy":
        return policy
    with session_scope() as s:
        rnd = s.get(Round, ctx.round_id)
        base = ModelRef(base_model=ctx.base_model, version_id=s.get(Run, ctx.run_id).base_version_id)
        if which == "produced":
            return version_ref(s.get(ModelVersion, rnd.produced_version_id)) if rnd.produced_version_id else policy
        if which == "base":
            return base
        if which.startswith("role:"):
            v = latest_role_version(s, workspace_id=ctx.workspace_id, run_id=ctx.run_id,
                                    before_round=ctx.round_number, role=which.split(":", 1)[1])
            return version_ref(v) if v is not None else base
        if which.startswith("version:"):
            vid = which.split(":", 1)[1]
            version = s.get(ModelVersion, int(vid)) if vid.isdigit() else None
            if version is None or version.workspace_id != ctx.workspace_id:
                raise ValueError(f"model version {vid} is not a model version of this workspace")
            return version_ref(version)
    raise ValueError(f"unknown model choice {which!r}: use policy, produced, base, role:<name> or version:<id>")

