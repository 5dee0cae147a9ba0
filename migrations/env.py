"""Alembic environment: the URL comes from the service settings (or the caller)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import text

from seal_service.db.base import Base
from seal_service.db import models  # noqa: F401  (registers the tables)
from seal_service.db.session import create_db_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Any constant works: it only has to be the same in every process running migrations.
PG_LOCK_ID = 0x5EA1


def database_url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from seal_service.settings import Settings

    return Settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = database_url()
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            is_pg = connection.dialect.name == "postgresql"
            if is_pg:
                # Several processes (API replicas, workers) may start at once: one migrates.
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_ID})
                connection.commit()
            try:
                context.configure(
                    connection=connection,
                    target_metadata=target_metadata,
                    render_as_batch=connection.dialect.name == "sqlite",
                    compare_type=True,
                )
                with context.begin_transaction():
                    context.run_migrations()
            finally:
                if is_pg:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_ID})
                    connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
