"""Alembic environment: the target metadata is SQLModel's, the URL comes from the caller's config
(set by shared.migrate) or from the settings."""
from alembic import context
from sqlmodel import SQLModel

import shared.models  # noqa: F401  (registers the tables)
from shared.db import make_engine

config = context.config
url = config.get_main_option("sqlalchemy.url")


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=SQLModel.metadata,
                          render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
