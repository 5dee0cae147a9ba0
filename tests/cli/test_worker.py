"""`seal worker` itself (seal_cli/commands/service.py): on a fresh Postgres database it migrates before it
runs the Celery worker, and two started at once serialise on the migration lock (migrations/env.py): both
come up, the schema is at head, alembic_version has one row."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from sqlalchemy import create_engine, inspect, select, text

from seal_service.db.migrate import head_revision
from seal_service.db.models import WorkerHeartbeat
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.service.test_migrations import TABLES
from tests.support.service import (
    Proc,
    fresh_postgres_database,
    require_postgres,
    require_redis,
    seal_cli,
    service_env,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
# The key every migrating process locks (one definition, in migrations/env.py).
PG_LOCK_ID = int(re.search(r"^PG_LOCK_ID = (\w+)", (ROOT / "migrations" / "env.py").read_text(), re.M).group(1), 0)
REDIS = "redis://127.0.0.1:6379/12"  # a Redis database of its own


def _waiting_for_lock(conn) -> int:  # noqa: ANN001
    """Sessions of this database blocked on the migration lock."""
    return conn.execute(text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = :k "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"), {"k": PG_LOCK_ID}).scalar()


def test_two_workers_starting_on_a_fresh_database_migrate_it_once(tmp_path):
    admin = require_postgres()
    require_redis(REDIS)
    queue = f"seal-test-{uuid.uuid4().hex[:8]}"
    with fresh_postgres_database(admin) as url:
        env = service_env(data_dir=TEST_DATA_DIR, state_dir=tmp_path, database_url=url, broker_url=REDIS,
                          task_queue=queue, storage_dir=tmp_path / "adapters", worker_preload_model="false",
                          worker_heartbeat_s=1)
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        workers: list[Proc] = []
        try:
            with engine.connect() as lock:
                # Held here, so that both are seen waiting on it before either can migrate.
                lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_ID})
                workers = [Proc(seal_cli("worker", "--hostname", f"w{i}@%h"), env, tmp_path / f"w{i}.log")
                           for i in range(2)]
                wait_for(lambda: _waiting_for_lock(lock) == 2 or not all(w.alive() for w in workers), 60, 0.2,
                         what="both workers to wait for the migration lock")
                assert all(w.alive() for w in workers), [w.log() for w in workers]
                assert _waiting_for_lock(lock) == 2
                assert inspect(lock).get_table_names() == []  # nothing migrated meanwhile
                lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_ID})

            def heartbeats() -> set[int]:
                for w in workers:
                    if not w.alive():
                        raise AssertionError(f"a worker exited:\n{w.log()}")
                with session_scope(url) as s:
                    return {hb.pid for hb in s.scalars(select(WorkerHeartbeat))}

            # Both come up: the Celery worker each `seal worker` became (same pid) beats.
            wait_for(lambda: heartbeats() == {w.pid for w in workers}, 120, 0.5, what="both workers' heartbeats")
            with engine.connect() as conn:
                assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head_revision()]
                assert TABLES <= set(inspect(conn).get_table_names())
            for w in workers:
                assert "cannot prepare the database" not in w.log(100_000)
        finally:
            for w in workers:
                w.stop()
            engine.dispose()
            import redis

            redis.Redis.from_url(REDIS).delete(queue)
