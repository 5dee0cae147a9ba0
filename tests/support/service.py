"""Helpers for the service tests: throwaway databases, free ports, subprocess servers and workers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

PG_ADMIN_URLS = (
    "postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    "postgresql+psycopg://root@127.0.0.1:5432/postgres",
)
REDIS_URL = os.environ.get("SEAL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Abort(Exception):
    """Raised by a ``wait_for`` check to stop waiting at once."""


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Abort:
            raise
        except Exception as e:  # noqa: BLE001
            last_exc = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def postgres_admin_url() -> str | None:
    """A URL of the local server's maintenance database, or None if Postgres is not reachable."""
    from sqlalchemy import create_engine, text

    for url in PG_ADMIN_URLS:
        engine = create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return url
        except Exception:  # noqa: BLE001
            continue
        finally:
            engine.dispose()
    return None


@contextlib.contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """Create ``seal_test_<random>``, yield its URL, drop it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"seal_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        try:
            yield url
        finally:
            from seal_service.db.session import dispose_engine

            dispose_engine(url)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def redis_available(url: str = REDIS_URL) -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except Exception:  # noqa: BLE001
        return False


def in_ci() -> bool:
    """True under CI (``CI=true``, as GitHub Actions and most runners set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def service_missing(what: str) -> None:
    """A needed service is down: skip locally, fail under CI (a skipped Postgres test must not pass CI)."""
    import pytest

    message = f"{what} is not reachable"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing service is a failure; start it with scripts/services.sh)",
                    pytrace=False)
    pytest.skip(message)


def require_postgres() -> str:
    """The admin URL of the local Postgres; skips (locally) or fails (CI=true) if it is down."""
    admin = postgres_admin_url()
    if admin is None:
        service_missing(f"PostgreSQL ({', '.join(PG_ADMIN_URLS)})")
    return admin  # type: ignore[return-value]


def require_redis(url: str = REDIS_URL) -> str:
    """``url`` if Redis answers there; skips (locally) or fails (CI=true) if not."""
    if not redis_available(url):
        service_missing(f"Redis ({url})")
    return url


@contextlib.contextmanager
def database_for(kind: str) -> Iterator[str | None]:
    """``database_url`` for a test run on ``kind``: None (the default SQLite under state_dir) or a fresh
    Postgres database (``require_postgres`` rules: skipped locally, failed under CI=true if Postgres is down)."""
    if kind == "sqlite":
        yield None
        return
    if kind != "postgres":
        raise ValueError(f"unknown database kind {kind!r}")
    with fresh_postgres_database(require_postgres()) as url:
        yield url


def service_env(**values: Any) -> dict[str, str]:
    """The current environment without SEAL_* variables, plus ``values`` as SEAL_<NAME>."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAL_")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1"})
    for k, v in values.items():
        if v is not None:
            env[f"SEAL_{k.upper()}"] = str(v)
    return env


class Proc:
    """A subprocess with its output in a log file; stopped politely, then killed."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, cwd: str | Path | None = None) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def seal_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "seal_cli.main", *args]


def wait_http(url: str, timeout: float, proc: Proc | None = None, status: int = 200) -> httpx.Response:
    def check() -> httpx.Response | None:
        if proc is not None and not proc.alive():
            raise Abort(f"process exited early:\n{proc.log()}")
        r = httpx.get(url, timeout=5)
        return r if r.status_code == status else None

    try:
        return wait_for(check, timeout, 0.5, what=url)
    except TimeoutError as e:
        raise TimeoutError(f"{e}\n{proc.log() if proc else ''}") from None


def service_settings(state_dir: Path, data_dir: Path, **overrides: Any):  # noqa: ANN201
    """Settings for an in-process API: state under ``state_dir``, the model under ``data_dir``."""
    from seal_service.settings import Settings

    values: dict[str, Any] = {"data_dir": data_dir, "state_dir": state_dir, "api_preload_model": False,
                              "worker_heartbeat_s": 1.0}
    values.update(overrides)
    return Settings(**values)


@contextlib.contextmanager
def api_client(settings: Any) -> Iterator[Any]:
    """A TestClient around ``create_app(settings)`` (startup migrates the database)."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app(settings)) as client:
        yield client


def new_key(settings: Any, tenant: str, admin: bool = False) -> str:
    from seal_service.db.migrate import upgrade_head
    from seal_service.db.session import session_scope
    from seal_service.keys import create_key

    upgrade_head(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as db:
        return create_key(db, tenant, admin=admin).key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def race(n: int, fn: Callable[[int], Any], timeout: float = 60.0) -> list[Any]:
    """``fn(i)`` in ``n`` threads released together by a barrier; their results in thread order
    (any exception in a thread fails the caller)."""
    import threading

    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            barrier.wait(10)
            out[i] = fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not errors, errors
    return out
