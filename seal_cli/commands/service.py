"""``seal serve``, ``seal worker`` and ``seal keys create``: the service side of the CLI.

Keys and the database go through ``seal_service``; only ``seal serve`` imports ``api`` (for the app).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Annotated, Optional

import typer

from seal_cli.errors import fail, one_line
from seal_engine.errors import SealError

keys_app = typer.Typer(help="API keys (stored hashed; each belongs to a tenant).", no_args_is_help=True)

log = logging.getLogger("seal.serve")


def _settings(host: str | None = None, port: int | None = None):  # noqa: ANN202
    from pydantic import ValidationError

    from seal_service.settings import Settings

    try:
        settings = Settings()
    except ValidationError as e:
        fail(one_line(e))
    update = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    return Settings.model_validate({**settings.model_dump(), **update}) if update else settings


def _migrate(settings) -> None:  # noqa: ANN001
    from seal_service.db.migrate import upgrade_head

    settings.ensure_dirs()
    try:
        upgrade_head(settings.resolved_database_url)
    except Exception as e:  # unreachable database, bad URL
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001
            shown = "(unparsable URL)"
        fail(f"cannot prepare the database {shown}: {' '.join(str(e).split())[:300]}")


def worker_argv(settings, loglevel: str = "info", hostname: str | None = None) -> list[str]:  # noqa: ANN001
    """The Celery worker command line (one process, model kept loaded between tasks)."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", "solo", "--concurrency", "1",
            "--queues", settings.task_queue, "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["--hostname", hostname]
    return argv


class WorkerProcess:
    """The local worker of ``seal serve``: started with it, restarted if it dies, stopped with it."""

    def __init__(self, argv: list[str], stop_timeout: float = 15.0) -> None:
        self.argv = argv
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="seal-worker-watch", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._spawn()
        self._watcher.start()

    def _spawn(self) -> None:
        # Its own session (a Ctrl-C reaches `seal serve`, which stops the worker in order);
        # SEAL_SUPERVISOR_PID makes the worker exit by itself if `seal serve` dies.
        env = {**os.environ, "SEAL_SUPERVISOR_PID": str(os.getpid())}
        self.proc = subprocess.Popen(self.argv, env=env, start_new_session=True)
        typer.echo(f"worker started (pid {self.proc.pid})", err=True)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            assert self.proc is not None
            rc = self.proc.poll()
            if rc is not None and not self._stopping.is_set():
                self.restarts += 1
                delay = min(2 ** min(self.restarts, 5), 30)
                typer.echo(f"worker exited with {rc}; restarting in {delay} s", err=True)
                if self._stopping.wait(delay):
                    return
                self._spawn()
            self._stopping.wait(0.5)

    def stop(self) -> None:
        self._stopping.set()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # Warm shutdown: the worker finishes or hands back its current task, then exits.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            # A job still running is resumed by the next worker (its lease expires).
            proc.kill()
            proc.wait(5)
        typer.echo("worker stopped", err=True)


def _exit_on_signal(sig: int, _frame: object) -> None:
    raise SystemExit(128 + sig)


def serve(
    host: Annotated[Optional[str], typer.Option(help="bind address (default SEAL_API_HOST, 127.0.0.1)")] = None,
    port: Annotated[Optional[int], typer.Option(help="port (default SEAL_API_PORT, 8000)")] = None,
    worker: Annotated[Optional[bool], typer.Option(
        "--worker/--no-worker", help="start a local worker (default: only in embedded mode, without SEAL_BROKER_URL)"
    )] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
) -> None:
    """Run the API (and, in embedded mode, a local worker).

    Without SEAL_BROKER_URL this is the embedded mode: SQLite database, a SQLite-file
    queue and a local worker process, no other service needed.
    """
    import uvicorn

    from api.main import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(host, port)
    _migrate(settings)
    start_worker = settings.embedded_broker if worker is None else worker
    local: WorkerProcess | None = None
    if start_worker:
        local = WorkerProcess(worker_argv(settings, log_level, hostname=f"seal-local-{os.getpid()}@%h"))
        local.start()
    typer.echo(
        f"seal API on http://{settings.api_host}:{settings.api_port} (docs at /docs); database "
        f"{settings.resolved_database_url.split('@')[-1]}, broker "
        f"{'embedded' if settings.embedded_broker else settings.resolved_broker_url.split('@')[-1]}",
        err=True,
    )
    settings_no_migrate = settings.model_copy(update={"auto_migrate": False})
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into an exception so the
    # worker is stopped below instead of the process dying on the spot.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        config = uvicorn.Config(create_app(settings_no_migrate), host=settings.api_host, port=settings.api_port,
                                log_level=log_level.lower(), timeout_graceful_shutdown=5)
        uvicorn.Server(config).run()
    finally:
        if local is not None:
            local.stop()


def worker(
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    hostname: Annotated[Optional[str], typer.Option(help="Celery node name (default seal@<host>)")] = None,
) -> None:
    """Run a worker: one process, one model, jobs one at a time.

    Production: one per GPU, with SEAL_BROKER_URL and SEAL_DATABASE_URL pointing at the
    shared Redis and Postgres.
    """
    settings = _settings()
    _migrate(settings)
    argv = worker_argv(settings, log_level, hostname=hostname or "seal@%h")
    os.execv(argv[0], argv)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="tenant name (created if new)")],
    admin: Annotated[bool, typer.Option("--admin", help="may call the admin endpoints")] = False,
    name: Annotated[Optional[str], typer.Option(help="a label for the key")] = None,
) -> None:
    """Create an API key and print it (it is shown only this once)."""
    from seal_service.db.session import session_scope
    from seal_service.keys import create_key

    settings = _settings()
    _migrate(settings)
    try:
        with session_scope(settings.resolved_database_url) as db:
            key = create_key(db, tenant, admin=admin, name=name)
    except SealError as e:  # a bad tenant name
        fail(one_line(e))
    typer.echo(f"created {'admin ' if admin else ''}key {key.id} for tenant {tenant!r}; it is shown only once:", err=True)
    typer.echo(key.key)

