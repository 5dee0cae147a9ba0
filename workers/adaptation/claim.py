"""Claiming an adaptation job for this worker, and the spec of the work read once claimed."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from seal_service.db.base import utcnow
from seal_service.db.models import (
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    AdaptationJob,
    Document,
    JobDocument,
    PolicyCheckpoint,
)
from seal_service.db.session import session_scope
from seal_service.settings import Settings
from seal_service.storage import remove_unregistered
from workers.errors import WORKER_LOST
from workers.identity import holder_is_dead

log = logging.getLogger("seal.worker")


@dataclass
class JobSpec:
    """Everything the work needs, read once after the claim."""

    id: str
    tenant_id: str
    name: str | None
    base_model: str
    strategy: str
    template: str | None
    policy_id: str | None
    policy_path: str | None
    num_self_edits: int
    lora: dict[str, Any]
    eval_questions: list[dict[str, str]]
    seed: int | None
    adapter_id: str
    attempts: int
    documents: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, text)
    task: dict[str, Any] | None = None  # a few-shot task job: {"task": {...}, "recipe"?: {...}}
    recipe: dict[str, Any] = field(default_factory=dict)  # RecipeSettings overrides of the request
    max_forgetting: float | None = None  # the request's bound; None: the worker's setting
    parent_id: str | None = None  # the version this job's adapter continues (workers.adaptation.lineage)
    alias: str | None = None  # moved to the new adapter when it is registered


def _claimable(now: datetime) -> ColumnElement[bool]:
    return or_(
        AdaptationJob.status == QUEUED,
        (AdaptationJob.status == RUNNING) & (or_(AdaptationJob.lease_until.is_(None), AdaptationJob.lease_until < now)),
    )


def claim(settings: Settings, job_id: str, worker: str, *, wait: bool = True) -> JobSpec | None:
    """Take the job for ``worker``; None when there is nothing for this delivery to do.

    A job held by another worker is waited for only while its lease is not renewed: a
    renewal proves that worker alive (this delivery is a duplicate), an expiry that it died.
    """
    url = settings.resolved_database_url
    deadline = time.monotonic() + settings.job_lease_s + 2
    first_lease = None
    while True:
        now = utcnow()
        # Read, then write in a separate transaction (SQLite cannot upgrade a stale read to a write).
        with session_scope(url) as s:
            job = s.get(AdaptationJob, job_id)
            if job is None:
                log.warning("job %s does not exist; dropping the message", job_id)
                return None
            status, holder, lease_until, attempts = job.status, job.worker, job.lease_until, job.attempts
            tenant, adapter_id, started_at = job.tenant_id, job.adapter_id, job.started_at
        if status in TERMINAL:
            if status != SUCCEEDED:
                remove_unregistered(settings, tenant, adapter_id)
            log.info("job %s is already %s; nothing to do", job_id, status)
            return None
        steal = status == RUNNING and holder_is_dead(holder)
        expired = lease_until is None or lease_until < now
        if attempts >= settings.max_job_attempts and (status == QUEUED or steal or expired):
            with session_scope(url) as s:
                res = s.execute(
                    update(AdaptationJob).where(AdaptationJob.id == job_id, AdaptationJob.status.in_((QUEUED, RUNNING)))
                    .values(status=FAILED, stage="failed", finished_at=now, lease_until=None, updated_at=now,
                            error_code=WORKER_LOST, error=f"the job was started {attempts} times and its worker stopped each time "
                                  "(crash, out of memory or kill); giving up")
                    .execution_options(synchronize_session=False)
                )
            if res.rowcount == 1:
                # What the killed attempts left (a half-saved or unregistered directory) goes with it.
                remove_unregistered(settings, tenant, adapter_id)
            return None
        cond = or_(_claimable(now), AdaptationJob.worker == holder) if steal else _claimable(now)
        with session_scope(url) as s:
            res = s.execute(
                update(AdaptationJob)
                .where(AdaptationJob.id == job_id, AdaptationJob.status.in_((QUEUED, RUNNING)), cond)
                .values(status=RUNNING, worker=worker, lease_until=now + timedelta(seconds=settings.job_lease_s),
                        claimed_at=now, attempts=AdaptationJob.attempts + 1, started_at=started_at or now,
                        stage="starting", error=None, error_code=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                s.commit()
                return _read_spec(s, job_id)
        if first_lease is None:
            first_lease = lease_until
        renewed = lease_until is not None and first_lease is not None and lease_until > first_lease
        if not wait or renewed or time.monotonic() > deadline:
            log.info("job %s is held by %s (alive); leaving it to that worker", job_id, holder)
            return None
        # Held by another worker: if it died its lease runs out soon, unless it renews it first.
        lease_left = (lease_until - now).total_seconds() if lease_until else 0.0
        time.sleep(min(max(lease_left, 0.1), 1.0))


def _read_spec(s: Session, job_id: str) -> JobSpec:
    """The claimed job's row, its documents (in order) and its policy's weights path."""
    s.expire_all()
    job = s.get(AdaptationJob, job_id)
    docs = s.execute(
        select(Document.id, Document.title, Document.text)
        .join(JobDocument, JobDocument.document_id == Document.id)
        .where(JobDocument.job_id == job_id).order_by(JobDocument.position)
    ).all()
    policy_path = None
    if job.policy_id:
        policy = s.get(PolicyCheckpoint, job.policy_id)
        policy_path = policy.storage_path if policy else None
    return JobSpec(
        id=job.id, tenant_id=job.tenant_id, name=job.name, base_model=job.base_model, strategy=job.strategy,
        template=job.template, policy_id=job.policy_id, policy_path=policy_path, num_self_edits=job.num_self_edits,
        lora=dict(job.lora or {}), eval_questions=list(job.eval_questions or []), seed=job.seed,
        adapter_id=job.adapter_id, attempts=job.attempts, documents=[tuple(d) for d in docs],
        task=dict(job.task) if job.task else None, recipe=dict(job.recipe or {}), max_forgetting=job.max_forgetting,
        parent_id=job.parent_id, alias=job.alias,
    )
