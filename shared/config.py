"""Settings for every service, read from the environment (prefix-free, one URL per backing service).

Embedded mode overrides `database_url` with a SQLite file and `execution` with "inline"; the
distributed stack sets them through docker-compose. Secrets have no defaults.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    return Path.home() / ".cache" / "autodidact"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTODIDACT_", env_file=None, extra="ignore")

    database_url: str = Field(default_factory=lambda: f"sqlite:///{default_home() / 'autodidact.db'}")
    redis_url: str = "redis://127.0.0.1:6379/0"
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
    # Prompts per generation shard: a round's generation fans out over this many-sized shards.
    generation_shard_size: int = 16
    generation_batch_size: int = 8  # prompts per backend call inside a shard (progress is saved per batch)
    # local | tgi | openai, or a plug-in "package.module:factory" returning a Backend
    generation_backend: str = "local"
    tgi_urls: str = ""  # comma-separated
    # TGI loads LoRA adapters only at start-up: this shell command (with {adapter_id} and
    # {adapter_path}) restarts the servers with the new adapter; it must be idempotent.
    tgi_refresh_command: str = ""
    tgi_preloaded_adapters: str = ""  # comma-separated adapter ids already served at start-up
    openai_base_url: str = ""
    openai_endpoint: str = "completions"  # completions | chat
    # Threads per worker process for torch (0 = torch's default). Set it to cores / processes on a
    # shared host: oversubscribed threads spin and slow every worker down.
    torch_threads: int = 0
    device: str = "auto"  # auto | cpu | cuda


@lru_cache
def get_settings() -> Settings:
    return Settings()
