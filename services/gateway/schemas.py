"""The API's request and response bodies (the typed contract in the OpenAPI schema).

Request models are strict: unknown fields are refused, "2" is not an integer and `true` is not a
number, and every number and text has an upper bound, so a typo is a 422 naming the field rather
than a run that asks for 10^20 epochs. Method configs are checked by the method's own config
class (services/methods), which embedded mode uses too.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Optional, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.methods.registry import BUILT_IN
from shared.models import ModelVersionPublic, PromptSetPublic, RunCreate

MAX_ROUNDS = 100
MAX_IDS = 1000  # prompt sets one run may name
MAX_ITEMS = 100_000  # prompts in one JSON body (the body size limit usually comes first)
DB_INT = 2**31 - 1  # ids are 32-bit integers in the database

# A str, not an enum: recipes may register after start-up (services.methods.register); the run
# creation refuses unknown methods with the list of registered ones.
Method = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$",
                              description=f"a registered method, e.g. {', '.join(BUILT_IN)}")]


def _unique(ids: list[int]) -> list[int]:
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"ids must not repeat; repeated: {dupes}")
    return ids


Id = Annotated[int, Field(ge=1, le=DB_INT)]
IdList = Annotated[list[Id], Field(max_length=MAX_IDS), AfterValidator(_unique)]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------- runs
class Stopping(Strict):
    """When a continuous run stops: after `max_rounds`, or when held-out accuracy has not improved
    by more than `delta` for `patience` rounds."""

    max_rounds: Optional[Annotated[int, Field(ge=1, le=MAX_ROUNDS)]] = None
    patience: Optional[Annotated[int, Field(ge=0, le=MAX_ROUNDS)]] = None
    delta: Optional[Annotated[float, Field(ge=0, le=1)]] = None


class RunRequest(Strict):
    method: Method
    base_model: Annotated[str, Field(min_length=1, max_length=256,
                                     description="'gemma', a model name under the configured model "
                                                 "roots, or an allowed hub id (GET /v1/base-models)")]
    prompt_set_ids: Annotated[IdList, Field(min_length=1)]
    eval_prompt_set_ids: IdList = []
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)] = 1
    config: dict[str, Any] = Field(default={}, description="the method's config fields (see METHODS.md)")
    continuous: bool = False
    stopping: Stopping = Stopping()

    def to_create(self) -> RunCreate:
        return RunCreate(**self.model_dump(exclude={"stopping"}),
                         stopping=self.stopping.model_dump(exclude_none=True))


class AddPromptSets(Strict):
    prompt_set_ids: Annotated[IdList, Field(min_length=1)]


class RoundDetail(BaseModel):
    number: int
    status: str
    stages: dict
    policy_version_id: Optional[int]
    produced_version_id: Optional[int]
    metrics: dict = Field(description="per-round metrics; per-step training metrics are at "
                                      "/v1/runs/{run_id}/rounds/{number}/train-steps")
    created_at: datetime
    finished_at: Optional[datetime]


class RunSummary(BaseModel):
    """A run as listed (no rounds: GET /v1/runs/{id} has them)."""

    id: int
    method: str
    base_model: str
    prompt_set_ids: list[int]
    eval_prompt_set_ids: list[int]
    rounds: int
    config: dict
    continuous: bool
    stopping: dict
    status: str
    error: Optional[str]
    created_at: datetime
    finished_at: Optional[datetime]


class RunDetail(RunSummary):
    round_details: list[RoundDetail] = []


class TrainSteps(BaseModel):
    round: int
    series: dict[str, list[dict[str, Any]]] = Field(description="per-step trainer metrics by job "
                                                                "(train_steps: the policy's)")


# ---------------------------------------------------------------- prompt sets
class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class Constraint(Strict):
    id: str = Field(description="an IFEval instruction id, e.g. change_case:english_lowercase")
    kwargs: dict[str, Any] = {}


class PromptItem(Strict):
    """One prompt: text, or chat messages ending with the user's; optional gold data."""

    prompt: Annotated[str, Field(min_length=1)] | Annotated[list[ChatMessage], Field(min_length=1)]
    reference: Optional[str] = None
    constraints: Optional[list[Constraint]] = None
    answer: Optional[str] = None
    topic: Optional[str] = None


class PromptSetRequest(Strict):
    name: Name
    description: Annotated[str, Field(max_length=2000)] = ""
    split: Literal["train", "heldout"] = "train"
    items: Annotated[list[PromptItem], Field(min_length=1, max_length=MAX_ITEMS)]


class PromptSetFields(Strict):
    """PromptSetRequest's fields with items left to services.gateway.validation, which reports
    every item's problems at once (with their line for JSONL)."""

    name: Name
    description: Annotated[str, Field(max_length=2000)] = ""
    split: Literal["train", "heldout"] = "train"
    items: Annotated[list[Any], Field(min_length=1, max_length=MAX_ITEMS)]


class PromptSetUpload(BaseModel):
    """Multipart form of POST /v1/prompt-sets: a JSONL file, one PromptItem per line, or a Parquet
    file whose columns hold the items' fields (`map` names other columns)."""

    model_config = ConfigDict(extra="forbid")

    file: bytes = Field(json_schema_extra={"format": "binary"})
    name: Optional[Name] = None
    description: Optional[Annotated[str, Field(max_length=2000)]] = None
    split: Literal["train", "heldout"] = "train"
    map: Optional[list[Annotated[str, Field(max_length=500)]]] = Field(
        default=None, max_length=8,
        description="Parquet only: field=column, one per field (repeat the form field) or comma-separated, "
                    "e.g. prompt=instruction,reference=output; unmapped fields come from same-named columns, "
                    "other columns are ignored")


# ---------------------------------------------------------------- keys
class KeyCreate(Strict):
    role: Literal["admin", "member"] = "member"
    expires_in_seconds: Optional[Annotated[int, Field(ge=60, le=10 * 365 * 86400)]] = None


class KeyPublic(BaseModel):
    id: int
    prefix: str = Field(description="the key's public id; the secret part is never stored")
    role: str
    created_at: datetime
    expires_at: Optional[datetime]
    revoked: bool
    state: Literal["active", "revoked", "expired"]


class KeyCreated(KeyPublic):
    key: str = Field(description="the key itself, shown once")


# ---------------------------------------------------------------- paging
T = TypeVar("T")


class CursorPage(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: Optional[str] = Field(description="pass as `cursor` for the next page; null on the last")


RunPage = CursorPage[RunSummary]
PromptSetPage = CursorPage[PromptSetPublic]
ModelPage = CursorPage[ModelVersionPublic]


class BaseModels(BaseModel):
    names: list[str] = Field(description="accepted values of base_model")


# ---------------------------------------------------------------- model exports
ExportDtype = Literal["auto", "float32", "bfloat16", "float16"]


class ModelExportRequest(Strict):
    dtype: ExportDtype = Field(default="auto", description="weights' dtype in the export; auto: the base's")


class ModelExport(BaseModel):
    """A version's export as a merged transformers directory (+ tokenizer, README.md model card)."""

    version_id: int
    dtype: ExportDtype
    status: Literal["absent", "pending", "ready", "failed"] = Field(
        description="pending: queued on the training queue (it waits for a running training task); "
                    "failed: see error, POST again to retry")
    path: Optional[str] = Field(description="the merged model directory in the artifact store (when ready)")
    archive_bytes: Optional[int] = Field(description="size of the .tar.gz download (when ready)")
    download: Optional[str] = Field(description="GET this path for the .tar.gz (when ready)")
    error: Optional[str]
