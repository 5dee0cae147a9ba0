"""What a worker does besides tasks: heartbeats (for /readyz), recovery of lost jobs and RL work, model preload."""

from __future__ import annotations

import logging
import os
import signal
import threading
from datetime import timedelta

from celery import Celery
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from seal_service.db.base import utcnow
from seal_service.db.models import QUEUED, RUNNING, AdaptationJob, WorkerHeartbeat
from seal_service.db.session import session_scope
from seal_service.queue import dispatch_adaptation, dispatch_rl
from seal_service.settings import Settings
from workers.identity import holder_is_dead
from workers.rl import leases as rl_leases

log = logging.getLogger("seal.worker")


# Set once this process has its model and the retention gate's base side (or gave up on them):
# only then does its heartbeat say it is there, so /readyz does not count a worker still loading.
MODEL_READY = threading.Event()


def beat(settings: Settings, worker: str, model_id: str) -> None:
    host, pid = worker.split(":")[0], int(worker.split(":")[1])
    now = utcnow()
    with session_scope(settings.resolved_database_url) as s:
        row = s.get(WorkerHeartbeat, worker)
        if row is None:
            s.add(WorkerHeartbeat(id=worker, hostname=host, pid=pid, queue=settings.task_queue,
                                  base_model=model_id, started_at=now, last_seen=now))
        else:
            row.last_seen = now
        prune(s, settings)


def prune(session: Session, settings: Settings) -> int:
    """Delete the rows of workers lost for over ``worker_prune_after_s`` (SIGKILLed, host gone)."""
    cutoff = utcnow() - timedelta(seconds=settings.worker_prune_after_s)
    res = session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < cutoff)
                          .execution_options(synchronize_session=False))
    return res.rowcount or 0


def forget(settings: Settings, worker: str) -> None:
    with session_scope(settings.resolved_database_url) as s:
        s.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == worker))


def recover(settings: Settings, app: Celery) -> list[str]:
    """Send again the jobs whose message may be lost. Duplicates are harmless (see workers.adaptation.run).

    - running, but its worker is dead (same host) or its lease expired, and not sent since;
    - queued, and not sent for ``requeue_after_s`` (or never sent: the API died before sending).
    """
    now = utcnow()
    url = settings.resolved_database_url
    sent: list[str] = []
    with session_scope(url) as s:
        rows = s.execute(
            select(AdaptationJob.id, AdaptationJob.status, AdaptationJob.worker, AdaptationJob.lease_until,
                   AdaptationJob.dispatched_at, AdaptationJob.claimed_at, AdaptationJob.created_at)
            .where(AdaptationJob.status.in_((QUEUED, RUNNING)))
        ).all()
    for job_id, status, holder, lease_until, dispatched_at, claimed_at, created_at in rows:
        if status == RUNNING:
            expired = lease_until is None or lease_until < now
            if not (expired or holder_is_dead(holder)):
                continue
            if dispatched_at is not None and claimed_at is not None and dispatched_at > claimed_at:
                continue  # already sent again after the dead worker took it
        else:
            last = dispatched_at or created_at
            if dispatched_at is None and last > now - timedelta(seconds=60):
                continue  # the API is probably sending it right now
            if dispatched_at is not None and last > now - timedelta(seconds=settings.requeue_after_s):
                continue
        # Claim the right to re-send (several workers may sweep at once).
        with session_scope(url) as s:
            res = s.execute(
                update(AdaptationJob)
                .where(AdaptationJob.id == job_id, AdaptationJob.status == status,
                       or_(AdaptationJob.dispatched_at.is_(None), AdaptationJob.dispatched_at == dispatched_at))
                .values(dispatched_at=now)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:
                continue
        try:
            task_id = dispatch_adaptation(app, settings, job_id)
        except Exception:
            log.warning("could not re-send job %s", job_id, exc_info=True)
            # Not sent (broker down): give the claim back, so that a later sweep tries again. Kept,
            # it would read as "sent again after the dead worker took it" and the job would stay
            # running for ever once the broker came back without the message.
            with session_scope(url) as s:
                s.execute(update(AdaptationJob).where(AdaptationJob.id == job_id, AdaptationJob.dispatched_at == now)
                          .values(dispatched_at=dispatched_at).execution_options(synchronize_session=False))
            continue
        with session_scope(url) as s:
            s.execute(update(AdaptationJob).where(AdaptationJob.id == job_id).values(task_id=task_id)
                      .execution_options(synchronize_session=False))
        log.info("re-sent job %s (%s, worker %s)", job_id, status, holder)
        sent.append(job_id)
    return sent


class Housekeeper:
    """A thread: heartbeat every ``worker_heartbeat_s``, recovery every ``recovery_interval_s``.

    Recovery starts at once; heartbeats wait for the model (``MODEL_READY``) when the worker
    preloads it, so that a worker is reported only once it can run a job without loading first.
    """

    def __init__(self, settings: Settings, app: Celery, worker: str) -> None:
        self.settings = settings
        self.app = app
        self.worker = worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seal-housekeeper", daemon=True)
        self._last_recovery = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            forget(self.settings, self.worker)
        except Exception:
            log.warning("could not remove the heartbeat row", exc_info=True)

    def _orphaned(self) -> bool:
        """Started by `seal serve` (SEAL_SUPERVISOR_PID) and that process is gone."""
        sup = os.environ.get("SEAL_SUPERVISOR_PID")
        return bool(sup) and os.getppid() != int(sup)

    def _run(self) -> None:
        import time

        while True:
            if self._orphaned():
                log.warning("`seal serve` is gone; shutting this worker down")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            ready = self._ready()
            if ready:
                try:
                    beat(self.settings, self.worker, self.settings.model_id)
                except Exception:
                    log.warning("heartbeat failed", exc_info=True)
            if time.monotonic() - self._last_recovery >= self.settings.recovery_interval_s:
                self._last_recovery = time.monotonic()
                try:
                    recover(self.settings, self.app)
                except Exception:
                    log.warning("recovery sweep failed", exc_info=True)
                try:
                    rl_leases.recover(self.settings, lambda kind, args: dispatch_rl(self.app, self.settings, kind, args))
                except Exception:
                    log.warning("rl recovery sweep failed", exc_info=True)
            # While loading, look often so that the first heartbeat follows readiness closely.
            period = self.settings.worker_heartbeat_s
            if self._stop.wait(period if ready else min(period, 0.2)):
                return

    def _ready(self) -> bool:
        return not self.settings.worker_preload_model or MODEL_READY.is_set()


def preload_model(settings: Settings) -> None:
    """Load the model and the base side of the retention gate (the base model's answers to the
    gate probes and prompts) and of the relevance calibration, so that no job pays for them."""
    from seal_engine.core.model import get_model
    from seal_engine.knowledge.forgetting import gate_check, gate_requests
    from seal_engine.serving.relevance import base_nlls

    try:
        bundle = get_model(settings)
        log.info("model %s loaded on %s", bundle.model_id, bundle.device)
        check = gate_check(bundle, settings)
        log.info("retention gate ready: %d probes, %d prompts", sum(check.base_correct), len(check.replies))
        if settings.recipe.relevance:
            base_nlls(bundle, gate_requests(bundle, settings))
    except Exception:
        log.exception("could not load the model; jobs will fail with the reason")
    finally:
        # Ready either way: a worker that cannot load the model still takes jobs and fails them
        # with the reason, rather than leaving them queued with no worker reported.
        MODEL_READY.set()
