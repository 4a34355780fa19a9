"""Migrations build the schema the tables describe, on Postgres and on SQLite."""
from __future__ import annotations

from alembic import command

from shared.migrate import alembic_config, upgrade


def test_postgres_schema_matches_the_models(pg_url):
    command.check(alembic_config(pg_url))  # raises when autogenerate finds a difference


def test_sqlite_schema_matches_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    upgrade(url)  # idempotent
    command.check(alembic_config(url))
