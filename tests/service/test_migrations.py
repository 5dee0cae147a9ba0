"""The registry schema: `alembic upgrade head` on SQLite and on the real Postgres, matching the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from seal_service.db import models  # noqa: F401
from seal_service.db.base import Base
from seal_service.db.migrate import alembic_config, current_revision, head_revision, upgrade_head
from seal_service.db.session import create_db_engine
from tests.support.schema import schema_snapshot
from tests.support.service import fresh_postgres_database, require_postgres

# The schema that `alembic upgrade head` (revision 0004) gave on Postgres before the code moved
# into its current layout (dumped from commit 78a30b4 with tests/support/schema.py): moving
# modules must not change what the migrations build.
RECORDED_REVISION = "0004"
RECORDED_SCHEMA = Path(__file__).resolve().parents[1] / "support" / "registry_schema.json"

TABLES = {
    "tenants", "api_keys", "documents", "adaptation_jobs", "job_documents", "self_edits", "adapters",
    "rl_runs", "policy_checkpoints", "worker_heartbeats", "alembic_version", "rl_samples", "rl_evaluations",
    "aliases",
}


def _check_schema(url: str) -> None:
    upgrade_head(url)
    upgrade_head(url)  # idempotent
    assert current_revision(url) == head_revision()
    engine = create_db_engine(url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        cols = {c["name"] for c in inspect(engine).get_columns("self_edits")}
        assert {"text", "prompt", "strategy", "policy_id", "reward"} <= cols
        cols = {c["name"] for c in inspect(engine).get_columns("adapters")}
        assert {"tenant_id", "base_model", "storage_path", "metrics", "status", "strategy", "parent_id", "lineage"} <= cols
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()
    # And back down, and up again.
    command.downgrade(alembic_config(url), "base")
    assert current_revision(url) is None
    upgrade_head(url)
    assert current_revision(url) == head_revision()


def test_upgrade_head_sqlite(tmp_path):
    _check_schema(f"sqlite:///{tmp_path / 'seal.db'}")


def test_upgrade_head_postgres():
    admin = require_postgres()
    with fresh_postgres_database(admin) as url:
        _check_schema(url)


def test_migrations_on_postgres_build_the_recorded_schema():
    admin = require_postgres()
    with fresh_postgres_database(admin) as url:
        command.upgrade(alembic_config(url), RECORDED_REVISION)
        engine = create_db_engine(url)
        try:
            assert schema_snapshot(engine) == json.loads(RECORDED_SCHEMA.read_text())
        finally:
            engine.dispose()


def test_linear_migration_history():
    from alembic.script import ScriptDirectory

    revisions = list(ScriptDirectory.from_config(alembic_config("sqlite://")).walk_revisions())
    # 0001: initial schema; 0002: RL samples and per-passage evaluations; 0003: RL work leases;
    # 0004: few-shot task jobs; 0005: the retention gate (job recipe, max_forgetting, error_code);
    # 0006: lineage (parent adapters, aliases).
    assert [r.revision for r in revisions] == ["0006", "0005", "0004", "0003", "0002", "0001"]
    assert [r.down_revision for r in revisions] == ["0005", "0004", "0003", "0002", "0001", None]
