"""Run the Alembic migrations programmatically (the API and ``seal serve`` do it on start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    if not (ROOT / "migrations").is_dir():
        raise RuntimeError(
            f"migrations not found next to the code ({ROOT / 'migrations'}): install seal from its source "
            "directory (pip install -e .), as the Dockerfiles do"
        )
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logging"] = False
    return cfg


def upgrade_head(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (idempotent)."""
    command.upgrade(alembic_config(url), "head")


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from seal_service.db.session import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
