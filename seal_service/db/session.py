"""Engines and sessions. One engine per database URL per process."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_pools: dict[str, dict[str, float]] = {}  # per URL: pool options set by configure_pool
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
    cur = dbapi_conn.cursor()
    # WAL lets the API read while the worker writes; busy_timeout waits out short locks.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def create_db_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        memory = not parsed.database or parsed.database == ":memory:"
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               **({} if memory else _pool_options(url)))
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **_pool_options(url))


def _pool_options(url: str) -> dict[str, float]:
    return {"pool_size": 10, "max_overflow": 20, "pool_timeout": 10.0, **_pools.get(url, {})}


def configure_pool(url: str, *, size: int, overflow: int, timeout_s: float) -> None:
    """This process's connection pool for ``url`` (a SQLite file's too): applies to
    the engine made from now on (one already made with other options is replaced)."""
    options = {"pool_size": size, "max_overflow": overflow, "pool_timeout": timeout_s}
    with _lock:
        made_with = _pool_options(url)
        _pools[url] = options
        if url not in _engines or made_with == _pool_options(url):
            return
        engine = _engines.pop(url)
    engine.dispose()


def get_engine(url: str) -> Engine:
    with _lock:
        if url not in _engines:
            _engines[url] = create_db_engine(url)
        return _engines[url]


def dispose_engine(url: str) -> None:
    with _lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def session_factory(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
