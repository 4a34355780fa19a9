"""Tables (SQLModel, table=True) and the API schemas built on them.

Every row belongs to a workspace, directly or through its parent. Natural keys carry unique
constraints so that workers can upsert: a redelivered task rewrites the same rows, never new ones.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from pydantic import StrictInt
from sqlalchemy import JSON, Column, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _json(**kw: Any) -> Any:
    return Field(sa_column=Column(JSON, nullable=kw.pop("nullable", True)), **kw)


# ---------------------------------------------------------------- tenancy
class Workspace(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    prefix: str = Field(index=True)  # the key's public id ("adk_<id>"), shown in listings; no secret part
    key_hash: str = Field(unique=True)  # sha256 of the whole key; the key itself is never stored
    role: str = "member"  # admin | member
    created_at: datetime = Field(default_factory=utcnow)
    revoked: bool = False
    expires_at: Optional[datetime] = None  # None: never expires


class IdempotencyRecord(SQLModel, table=True):
    """The first answer to a creating request sent with an `Idempotency-Key` header; a retry with
    the same key gets this answer back instead of creating again."""

    __table_args__ = (UniqueConstraint("workspace_id", "scope", "key"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    scope: str  # which endpoint: "runs" | "prompt-sets"
    key: str
    request_hash: str  # sha256 of the request body: the same key with another body is refused
    status_code: Optional[int] = None  # None while the first request is still running
    response: Optional[dict] = _json()
    created_at: datetime = Field(default_factory=utcnow)


# ---------------------------------------------------------------- data
class PromptSet(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    name: str
    description: str = ""
    split: str = "train"  # train | heldout (evaluation prompts)
    size: int = 0
    # Set on prompt sets a run wrote itself (Self-Rewarding's self-instruction in that round).
    source_round_id: Optional[int] = Field(default=None, foreign_key="round.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)


class Prompt(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("prompt_set_id", "position"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    prompt_set_id: int = Field(foreign_key="promptset.id", index=True)
    position: int  # 0-based line/item number in the uploaded set
    messages: list = _json(nullable=False)  # chat messages [{role, content}]
    reference: Optional[str] = Field(default=None, sa_column=Column(Text))
    constraints: Optional[list] = _json()  # [{id, kwargs}] in IFEval's instruction ids
    answer: Optional[str] = None
    topic: Optional[str] = None  # free label (the curriculum's topics); not used for training


# ---------------------------------------------------------------- runs
class Run(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    method: str
    base_model: str
    base_version_id: Optional[int] = None  # ModelVersion id (no FK: versions point at runs)
    prompt_set_ids: list = _json(nullable=False)
    eval_prompt_set_ids: list = _json(default_factory=list)
    config: dict = _json(nullable=False)
    rounds: int = 1
    continuous: bool = False
    stopping: dict = _json(default_factory=dict)
    status: str = "queued"  # queued | running | succeeded | failed | cancelled | stopped (a regression rule)
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None
    # The API key that submitted the run (None: embedded mode); members may cancel only their own.
    created_by_key_id: Optional[int] = Field(default=None, foreign_key="apikey.id")


class Round(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "number"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    number: int  # t, from 1
    status: str = "running"  # running | succeeded | failed | cancelled
    stage_index: int = 0  # position in the recipe's stage list
    # {stage: {status, started_at, finished_at, seconds, shards, error}}
    stages: dict = _json(default_factory=dict)
    policy_version_id: Optional[int] = Field(default=None, foreign_key="modelversion.id")
    produced_version_id: Optional[int] = Field(default=None, foreign_key="modelversion.id")
    metrics: dict = _json(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None


class StageTask(SQLModel, table=True):
    """One unit of work of a stage (a shard of prompts, or the whole stage). The conductor moves
    a round on when every StageTask of its current stage is done."""

    __table_args__ = (UniqueConstraint("round_id", "stage", "shard"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", index=True)
    stage: str
    shard: int = 0
    payload: dict = _json(default_factory=dict)  # e.g. {"prompt_ids": [...]}
    status: str = "pending"  # pending | running | done | failed
    attempts: int = 0
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    enqueued_at: Optional[datetime] = None
    started_at: Optional[datetime] = None
    # Stamped every few seconds by the worker running it (shared/stages.py); a stale stamp on a
    # running task means its worker died, and the sweep resends it.
    heartbeat_at: Optional[datetime] = None
    finished_at: Optional[datetime] = None


# Sample.finish_reason of an answer cut at the generation limit (it never ended).
FINISH_AT_LIMIT = "length"
# Sample.role of a held-out answer → the model that wrote it (a `model_for` name); each role's
# aggregates are stored under the round metric of the same name. Round 1 also answers with the
# base ("before") and with a policy it made itself (Self-Rewarding's M1).
EVAL_ROLES = {"eval": "produced", "eval_base": "base", "eval_policy": "policy"}
# The rows a run's table shows before its rounds (label, round 1's metric): the model the run
# started from, and the policy round 1 made itself when it made one.
START_ROWS = (("start", "eval_base"), ("1: its start", "eval_policy"))


class Sample(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("round_id", "prompt_id", "index", "role"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", index=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    index: int
    role: str = "policy"  # policy | eval | candidate | judge ...
    text: str = Field(sa_column=Column(Text, nullable=False))
    token_count: int = 0
    finish_reason: str = ""  # "stop", or FINISH_AT_LIMIT for an answer that ran into max_new_tokens
    generator_version_id: Optional[int] = Field(default=None, foreign_key="modelversion.id")
    created_at: datetime = Field(default_factory=utcnow)


class Judgment(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("sample_id", "kind", "vote_index"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    sample_id: int = Field(foreign_key="sample.id", index=True)
    kind: str  # verifier | rubric | refiner
    vote_index: int = 0
    score: Optional[float] = None
    passed: Optional[bool] = None
    rationale: Optional[str] = Field(default=None, sa_column=Column(Text))


class RefinementNode(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("sample_id", "path"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    sample_id: int = Field(foreign_key="sample.id", index=True)  # the failed response at the root
    path: str  # "0", "0.1", "0.1.2": position in the tree
    parent_path: Optional[str] = None
    depth: int = 0
    text: str = Field(sa_column=Column(Text, nullable=False))
    passed: Optional[bool] = None  # the refiner's majority verdict on this node
    score: Optional[float] = None  # fraction of 'yes' votes
    judgment: Optional[str] = Field(default=None, sa_column=Column(Text))  # judge text used to refine it


class PreferencePair(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("round_id", "prompt_id", "source", "index"),)
    id: Optional[int] = Field(default=None, primary_key=True)
    round_id: int = Field(foreign_key="round.id", index=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    index: int = 0
    source: str  # gold_vs_generated | judge_best_worst | refined_vs_original
    chosen: str = Field(sa_column=Column(Text, nullable=False))
    rejected: str = Field(sa_column=Column(Text, nullable=False))
    margin: Optional[float] = None


class ModelVersion(SQLModel, table=True):
    id: Optional[int] = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    # Natural key: "base:<model>" or "run:<id>:round:<t>:<role>". A retried training task that
    # publishes again finds this key and reuses the row.
    key: str = Field(index=True)
    run_id: Optional[int] = Field(default=None, foreign_key="run.id", index=True)
    round_number: Optional[int] = None
    parent_id: Optional[int] = Field(default=None, foreign_key="modelversion.id")
    kind: str = "adapter"  # base | adapter | merged
    base_model: str
    uri: Optional[str] = None  # adapter / model directory in the artifact store
    metrics: dict = _json(default_factory=dict)
    promoted: bool = False
    created_at: datetime = Field(default_factory=utcnow)

    __table_args__ = (UniqueConstraint("workspace_id", "key"),)


# ================================================================ API schemas
class PromptSetPublic(SQLModel):
    id: int
    name: str
    description: str
    split: str
    size: int
    created_at: datetime


class PromptPublic(SQLModel):
    id: int
    position: int
    messages: list
    reference: Optional[str]
    constraints: Optional[list]
    answer: Optional[str]
    topic: Optional[str] = None


class Page(SQLModel):
    items: list[Any]
    total: int
    offset: int
    limit: int


class RunCreate(SQLModel):
    method: str
    base_model: str
    prompt_set_ids: list[StrictInt]
    eval_prompt_set_ids: list[StrictInt] = []
    rounds: int = 1
    config: dict = {}
    continuous: bool = False
    stopping: dict = {}


class RoundPublic(SQLModel):
    number: int
    status: str
    stages: dict
    policy_version_id: Optional[int]
    produced_version_id: Optional[int]
    metrics: dict
    created_at: datetime
    finished_at: Optional[datetime]


class RunPublic(SQLModel):
    id: int
    method: str
    base_model: str
    prompt_set_ids: list
    eval_prompt_set_ids: list
    rounds: int
    config: dict
    continuous: bool
    stopping: dict
    status: str
    error: Optional[str]
    created_at: datetime
    finished_at: Optional[datetime]
    round_details: list[RoundPublic] = []


class ModelVersionPublic(SQLModel):
    id: int
    key: str
    run_id: Optional[int]
    round_number: Optional[int]
    parent_id: Optional[int]
    kind: str
    base_model: str
    uri: Optional[str]
    metrics: dict
    promoted: bool
    created_at: datetime
