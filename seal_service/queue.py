"""The job queue that the API and the workers share: the Celery app and the dispatch of tasks.

The broker is the service's: Redis in production (``SEAL_BROKER_URL``), or, with no
broker configured, a SQLite file next to the embedded database (kombu's SQLAlchemy
transport), so the embedded mode runs the same tasks through the same queue.
"""

from __future__ import annotations

from celery import Celery

from seal_service.db.base import utcnow
from seal_service.db.models import RLWorkLease
from seal_service.db.session import session_scope
from seal_service.settings import Settings

ADAPT_TASK = "seal.adapt"
RL_STEP_TASK = "seal.rl.step"
RL_EVALUATE_TASK = "seal.rl.evaluate"
# The RL unit of a run's step work (sampling an iteration, fine-tuning the policy); units >= 0
# are passages (or tasks) of an iteration.
STEP = -1


def broker_options(settings: Settings) -> dict:
    url = settings.resolved_broker_url
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        return {
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": settings.restore_interval_s,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        }
    if url.startswith(("sqla+", "sqlalchemy+")):
        # Passed to create_engine: wait out SQLite locks instead of failing.
        return {"connect_args": {"timeout": 30}} if "sqlite" in url else {"pool_pre_ping": True}
    return {}


def make_celery(settings: Settings, *, include_tasks: bool = False) -> Celery:
    app = Celery("seal", broker=settings.resolved_broker_url, include=["workers.tasks"] if include_tasks else [])
    app.conf.update(
        # A task is acknowledged only once it has finished; a worker that dies mid-task
        # leaves its message to be delivered again. Task bodies are idempotent.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,
        task_default_queue=settings.task_queue,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    app.conf.seal_settings = settings
    return app


def dispatch_adaptation(app: Celery, settings: Settings, job_id: str) -> str:
    """Send the job's task; returns the task id. Raises kombu/redis errors if the broker is down."""
    result = app.send_task(ADAPT_TASK, args=[job_id], queue=settings.task_queue,
                           retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
    return result.id


def dispatch_rl(app: Celery, settings: Settings, kind: str, args: list) -> str:
    """Send an RL task: ``step`` (advance a run) or ``evaluate`` (one passage of an iteration)."""
    name = {"step": RL_STEP_TASK, "evaluate": RL_EVALUATE_TASK}[kind]
    result = app.send_task(name, args=args, queue=settings.task_queue,
                           retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5})
    return result.id


def check_broker(app: Celery, timeout: float = 3.0) -> None:
    """Raise if the broker cannot be reached."""
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        # Connection objects are lazy: open a channel to really talk to the broker.
        conn.default_channel  # noqa: B018


def mark_dispatched(settings: Settings, run_id: str, iteration: int, units: list[int]) -> None:
    """Record that the messages of ``units`` were sent (the recovery sweep resends lost ones)."""
    now = utcnow()
    with session_scope(settings.resolved_database_url) as s:
        for unit in units:
            row = s.get(RLWorkLease, (run_id, iteration, unit))
            if row is None:
                s.add(RLWorkLease(rl_run_id=run_id, iteration=iteration, unit=unit, dispatched_at=now, attempts=0))
            else:
                row.dispatched_at = now
