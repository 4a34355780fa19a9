"""Settings for every service, read from the environment (`AUTODIDACT_` prefix, one URL per backing
service). This is the only module that reads the process environment.

Embedded mode builds its own Settings (a SQLite file, inline execution) and installs it with
`use_settings`, instead of changing the environment; the distributed stack sets the variables
through docker-compose. Secrets have no defaults.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".cache" / "autodidact"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTODIDACT_", env_file=None, extra="ignore")

    database_url: str = Field(default_factory=lambda: f"sqlite:///{default_home() / 'autodidact.db'}")
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The API client and the remote CLI commands (services/client.py): the gateway's base URL
    # (AUTODIDACT_URL) and the API key they send (AUTODIDACT_API_KEY; a secret, so no default).
    url: str = "http://127.0.0.1:8000"
    api_key: Optional[str] = None
    # Where adapters and merged models are written; a shared volume in the distributed stack.
    artifact_dir: Path = Field(default_factory=lambda: default_home() / "artifacts")
    # "celery": stages are sent to Celery queues. "inline": the same task functions run in-process
    # (embedded mode and some tests).
    execution: str = "celery"
    # Longer than the longest training task: Redis redelivers unacked tasks after this many seconds.
    visibility_timeout: int = 6 * 3600
    # The conductor's sweep resends a StageTask still pending this long after it was sent (a lost
    # message: broker flushed, or the sender died between commit and send).
    resend_after_seconds: int = 600
    # A worker stamps the StageTask it runs every `heartbeat_seconds`; the sweep (every
    # `sweep_interval_seconds`, Celery beat) resends a running task whose stamp is older than
    # `heartbeat_timeout` seconds: its worker died, and the per-task lock makes an early resend safe.
    heartbeat_seconds: float = 5.0
    heartbeat_timeout: float = 30.0
    sweep_interval_seconds: float = 15.0
    # Prompts per generation shard: a round's generation fans out over this many-sized shards.
    # The local backend fills its batch from one shard's rows, so small shards leave it idle.
    generation_shard_size: int = 64
    # Prompts per backend call inside a shard (progress is saved per call); 0 lets the backend choose.
    generation_batch_size: int = 0
    # Memory for the local backend's rows in flight (KV cache and logits); it decodes as many rows
    # at once as this holds, replacing finished rows by waiting ones.
    generation_memory_mb: int = 2048
    # Greedy decoding's LM head in the local backend: bf16-exact takes the argmax from a bfloat16
    # product and re-scores the few candidates its error bound leaves in float32 (the float32
    # model's tokens, ~3x faster head on CPUs with AVX-512 BF16); float32 computes every logit in
    # float32; auto = bf16-exact where the CPU has native bfloat16 products.
    greedy_head: Literal["auto", "bf16-exact", "float32"] = "auto"
    # Weights of the local backend's model: auto = float32 on CPU, bfloat16 on GPU. bfloat16 on a
    # CPU is an opt-in speed-up whose answers differ from float32's (docs/benchmarks.md).
    generation_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # local | tgi | openai, or a plug-in "package.module:factory" returning a Backend
    generation_backend: str = "local"
    tgi_urls: str = ""  # comma-separated
    # TGI loads LoRA adapters only at start-up: this shell command (with {adapter_id} and
    # {adapter_path}) restarts the servers with the new adapter; it must be idempotent.
    tgi_refresh_command: str = ""
    tgi_preloaded_adapters: str = ""  # comma-separated adapter ids already served at start-up
    openai_base_url: str = ""  # comma-separated: several servers are balanced like tgi_urls
    openai_endpoint: str = "completions"  # completions | chat
    # Run-time LoRA adapters a server keeps (vLLM's --max-loras); past it, the least recently used
    # are unloaded. 0 = never unload.
    openai_max_loras: int = 4
    # Threads per worker process for torch (0 = torch's default). Set it to cores / processes on a
    # shared host: oversubscribed threads spin and slow every worker down.
    torch_threads: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # Training processes on a host without GPUs (CPU DDP under `accelerate launch`); with GPUs,
    # one process per GPU.
    train_processes: int = 1
    # Where the demo's Gemma model is converted to safetensors once (default: user cache).
    model_cache: Path = Field(default_factory=lambda: default_home() / "models")
    # The project's NLTK data directory (punkt_tab written from a PyPI package, never downloaded).
    nltk_data: Path = Field(default_factory=lambda: default_home() / "nltk_data")
    # The gateway refuses request bodies larger than this (413); uploads are read in a stream.
    max_body_bytes: int = 32 * 1024 * 1024
    # Where API runs may take their base model from (besides "gemma"): directories whose
    # subdirectories are models (with config.json), comma-separated; the compose file mounts /models.
    model_roots: str = "/models"
    # Hugging Face hub ids the deployment allows as base_model (comma-separated; empty: none).
    allowed_hub_models: str = ""
    # Observability (shared/logs.py, shared/metrics.py): log lines as text or JSON objects, each with
    # the run, round, stage and task ids it belongs to; the level (empty: the command's default,
    # INFO for services and WARNING for embedded runs); the port of a worker's Prometheus /metrics
    # (0 = none; the gateway serves /metrics on its own port).
    log_format: Literal["text", "json"] = "text"
    log_level: str = ""
    worker_metrics_port: int = 0
    # bench/overhead.py: a directory where every worker process writes where its tasks' time went
    # (shared/profiling.py; a stack sampler on the task thread). Empty: no sampling.
    profile_dir: str = ""
    # Experiment tracking (shared/tracking.py): "none", or a comma list of mlflow, tensorboard. A run's
    # method config field `tracking` overrides it for that run. Both backends write locally by default:
    # MLflow to `tracking_uri` (empty: sqlite:///<artifact_dir>/tracking/mlflow.db; any MLflow URI,
    # e.g. http://mlflow:5000), TensorBoard event files under `tensorboard_dir` (empty:
    # <artifact_dir>/tracking/tensorboard), one directory per run.
    tracking: str = "none"
    tracking_uri: str = ""
    tracking_experiment: str = "autodidact"
    tensorboard_dir: str = ""

    @field_validator("tracking")
    @classmethod
    def _known_trackers(cls, value: str) -> str:
        from shared.tracking import parse_backends

        parse_backends(value)  # ValueError naming the allowed backends
        return value


_installed: Settings | None = None


@lru_cache
def _from_environment() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The settings installed with `use_settings`, else those read once from the environment."""
    return _installed if _installed is not None else _from_environment()


def use_settings(settings: Settings | None) -> None:
    """Install `settings` for this process (embedded mode, tests); None goes back to the
    environment's."""
    global _installed
    _installed = settings


def _clear() -> None:
    """Forget installed and cached settings: the next `get_settings` reads the environment."""
    use_settings(None)
    _from_environment.cache_clear()


get_settings.cache_clear = _clear  # type: ignore[attr-defined]


# ---------------------------------------------------------------- launcher protocol
# Not settings: variables that `accelerate launch` / torchrun (and our launcher, for its child
# processes) set on each training process. Read here so that no other module reads the environment.
LAUNCHED_CHILD = "AUTODIDACT_LAUNCHED"


def launched_child() -> bool:
    """Whether this process is a training child started by services.training.launch."""
    return os.environ.get(LAUNCHED_CHILD) == "1"


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def child_environment() -> dict[str, str]:
    """The environment a launched training child gets: ours plus the child marker."""
    return {**os.environ, LAUNCHED_CHILD: "1"}


def mark_launched_child() -> None:
    os.environ[LAUNCHED_CHILD] = "1"


# ---------------------------------------------------------------- prometheus_client's protocol
# Not a setting: prometheus_client's multiprocess mode reads this variable in every process that
# records metrics; shared/metrics.py sets it in a worker before its pool forks the children.
PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def set_metrics_multiproc_dir(path: Path) -> None:
    os.environ[PROMETHEUS_MULTIPROC_DIR] = str(path)


def quiet_tracker_clients() -> None:
    """Keep MLflow's client offline and quick to give up: no usage telemetry, and few, short HTTP
    retries (a tracking server that is down must not hold a training step for minutes). Values the
    operator set in the environment win."""
    for name, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1"),
                        ("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")):
        os.environ.setdefault(name, value)
