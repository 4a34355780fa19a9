"""Apply the Alembic migrations in shared/migrations to a database (Postgres or SQLite)."""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shared.config import get_settings

HERE = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("sqlalchemy.url", url or get_settings().database_url)
    return cfg


def upgrade(url: str | None = None) -> None:
    url = url or get_settings().database_url
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


def revision(message: str, url: str) -> None:
    """Autogenerate a new migration against an up-to-date database (developer tool)."""
    command.revision(alembic_config(url), message=message, autogenerate=True)
