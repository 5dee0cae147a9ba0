"""Adaptation jobs on the API side: validate and store a request, dispatch it, report on it,
follow and cancel it. Task jobs (:mod:`api.services.tasks`) are adaptation jobs too."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.errors import APIError, field_error, not_found
from api.limits import too_many
from api.schemas import AdaptationCreate, AdaptationOut, DocumentIn, JobErrorOut, Progress, SelfEditOut, valid_id
from api.services.aliases import alias_name_problem
from api.services.documents import store_document
from api.services.models import resolve_adapter
from api.services.policies import promoted_policy
from seal_engine.config import LoraSettings
from seal_engine.errors import InputError
from seal_engine.knowledge.prompts import CUSTOM, STRATEGY_NAMES, get_strategy
from seal_service.db.base import new_id, utcnow
from seal_service.db.models import (
    CANCELLED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    AdaptationJob,
    Adapter,
    Document,
    JobDocument,
    PolicyCheckpoint,
)
from seal_service.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("seal.api.jobs")

# error.code of a job whose task message could not be sent.
QUEUE_UNAVAILABLE = "queue_unavailable"


def adapter_id_for(job_id: str) -> str:
    """Adapter ids are derived from job ids, so a job can only ever register one adapter."""
    return "adp_" + job_id.split("_", 1)[1]


def check_job_quota(*, db: Session, settings: Settings, tenant_id: str) -> None:
    """429 when the tenant already has ``tenant_max_active_jobs`` jobs queued or running."""
    limit = settings.tenant_max_active_jobs
    if limit <= 0:
        return
    active = db.scalar(select(func.count()).select_from(AdaptationJob).where(
        AdaptationJob.tenant_id == tenant_id, AdaptationJob.status.in_((QUEUED, RUNNING))))
    if active >= limit:
        raise too_many(f"this tenant already has {active} jobs queued or running (at most {limit}: "
                       "SEAL_TENANT_MAX_ACTIVE_JOBS); retry when one has finished", retry_after_s=30,
                       code="too_many_active_jobs")


def create_job(*, db: Session, settings: Settings, tenant_id: str, body: AdaptationCreate) -> AdaptationJob:
    """Validate against the server's limits, store documents and the job (status queued). Caller commits."""
    base_model = settings.model_id
    check_job_quota(db=db, settings=settings, tenant_id=tenant_id)
    if body.base_model is not None and body.base_model != base_model:
        raise field_error(("base_model",), f"unknown base model {body.base_model!r}; this server adapts {base_model!r}")
    if len(body.documents) > settings.max_documents:
        raise field_error(("documents",), f"at most {settings.max_documents} documents per job")
    num_self_edits = body.num_self_edits if body.num_self_edits is not None else settings.recipe.num_self_edits
    if num_self_edits > settings.max_self_edits:
        raise field_error(("num_self_edits",), f"at most {settings.max_self_edits} self-edits per document")
    if body.eval_questions is not None and len(body.eval_questions) > settings.max_eval_questions:
        raise field_error(("eval_questions",), f"at most {settings.max_eval_questions} questions")

    policy: PolicyCheckpoint | None = None
    strategy = body.strategy
    if strategy is None and body.template is not None:
        strategy = CUSTOM
    if strategy is None:
        policy = promoted_policy(db=db, base_model=base_model)
        strategy = policy.strategy if policy is not None else settings.recipe.strategy
    try:
        get_strategy(strategy, body.template if strategy == CUSTOM else None)
    except InputError as e:
        loc = "template" if strategy == CUSTOM else "strategy"
        raise field_error((loc,), str(e) if loc == "template" else
                          f"unknown strategy {strategy!r}; choose one of {', '.join([*STRATEGY_NAMES, CUSTOM])}") from None
    if body.template is not None and strategy != CUSTOM:
        raise field_error(("template",), "a template needs strategy 'custom'")

    lora = settings.lora.model_copy(update=body.lora.model_dump(exclude_none=True))
    parent = None
    if body.parent is not None:
        parent = _parent(db=db, settings=settings, tenant_id=tenant_id, body=body)
        # A new version continues its parent's LoRA tensors: their shape is the parent's.
        lora = LoraSettings.model_validate({**(parent.lora or settings.lora.model_dump()),
                                            **body.lora.model_dump(exclude_none=True, exclude=set(LORA_SHAPE))})
    if body.alias is not None and (problem := alias_name_problem(body.alias, settings)) is not None:
        raise field_error(("alias",), problem)
    docs: list[Document] = []
    for i, item in enumerate(body.documents):
        if item.id is not None:
            row = db.get(Document, item.id) if valid_id(item.id) else None
            if row is None or row.tenant_id != tenant_id:
                raise field_error(("documents", i, "id"), f"unknown document id {item.id!r}")
        else:
            assert item.text is not None
            if len(item.text) > settings.max_document_chars:
                raise field_error(("documents", i, "text"), f"longer than {settings.max_document_chars} characters")
            row = store_document(db=db, tenant_id=tenant_id, doc=DocumentIn(title=item.title, text=item.text))
        docs.append(row)

    job_id = new_id("job")
    job = AdaptationJob(
        id=job_id, tenant_id=tenant_id, name=body.name, status=QUEUED, stage="queued", progress=0.0,
        base_model=base_model, strategy=strategy, template=body.template if strategy == CUSTOM else None,
        policy_id=policy.id if policy else None, num_self_edits=num_self_edits, lora=lora.model_dump(),
        # What the request asked for (the worker refuses a job whose engine cannot apply it) ...
        recipe={**body.recipe.model_dump(exclude_none=True),
                **({"max_forgetting": body.max_forgetting} if body.max_forgetting is not None else {})} or None,
        # ... and the bound the job runs under, the server's when the request gives none.
        max_forgetting=body.max_forgetting if body.max_forgetting is not None else settings.recipe.max_forgetting,
        eval_questions=[q.model_dump() for q in body.eval_questions] if body.eval_questions else None,
        seed=body.seed, adapter_id=adapter_id_for(job_id), attempts=0,
        parent_id=parent.id if parent is not None else None, alias=body.alias,
        # Set before the message is sent, so it can never look newer than the worker's claim.
        dispatched_at=utcnow(),
    )
    db.add(job)
    db.flush()
    for pos, d in enumerate(docs):
        db.add(JobDocument(job_id=job_id, position=pos, document_id=d.id))
    db.flush()
    return job


# LoRA settings that fix the tensors' shapes and scale: a new version cannot change them.
LORA_SHAPE = ("rank", "alpha", "target_modules")


def _parent(*, db: Session, settings: Settings, tenant_id: str, body: AdaptationCreate) -> Adapter:
    """The adapter (id or alias) a new version continues: 404 unless it is the tenant's and ready,
    422 when it cannot be continued by this server or with these LoRA settings."""
    assert body.parent is not None
    row = resolve_adapter(db=db, tenant_id=tenant_id, name=body.parent, param="parent")
    if row.base_model != settings.model_id:
        raise field_error(("parent",), f"adapter {row.id} was trained for {row.base_model!r}; this server adapts "
                                       f"{settings.model_id!r}")
    made_by = db.get(AdaptationJob, row.job_id) if row.job_id else None
    if made_by is not None and made_by.task is not None:
        raise field_error(("parent",), f"adapter {row.id} was trained on a few-shot task, not documents")
    inherited = row.lora or settings.lora.model_dump()
    for name in LORA_SHAPE:
        asked = getattr(body.lora, name)
        if asked is not None and asked != inherited.get(name):
            raise field_error(("lora", name), f"a new version keeps its parent's {name} ({inherited.get(name)!r}): "
                                              "training continues the parent's LoRA tensors")
    return row


def get_job(*, db: Session, tenant_id: str, job_id: str) -> AdaptationJob:
    """The tenant's job, else 404 (another tenant's id is just as unknown)."""
    job = db.get(AdaptationJob, job_id) if valid_id(job_id) else None
    if job is None or job.tenant_id != tenant_id:
        raise not_found("adaptation", job_id)
    return job


def list_jobs(*, db: Session, tenant_id: str | None, limit: int, status: str | None = None) -> list[AdaptationJob]:
    """Jobs, newest first: of one tenant, or (``tenant_id=None``, admin) of every tenant."""
    q = select(AdaptationJob)
    if tenant_id is not None:
        q = q.where(AdaptationJob.tenant_id == tenant_id)
    if status:
        q = q.where(AdaptationJob.status == status)
    return list(db.scalars(q.order_by(AdaptationJob.created_at.desc()).limit(limit)))


def job_out(job: AdaptationJob) -> AdaptationOut:
    return AdaptationOut(
        id=job.id, name=job.name, status=job.status,
        progress=Progress(stage=job.stage, fraction=round(job.progress or 0.0, 4)),
        base_model=job.base_model, strategy=job.strategy, policy_id=job.policy_id,
        num_self_edits=job.num_self_edits, lora=job.lora or {},
        documents=[d.document_id for d in job.documents],
        num_eval_questions=len(job.eval_questions or []),
        self_edits=[
            SelfEditOut(index=s.position, document_id=s.document_id, strategy=s.strategy, policy_id=s.policy_id,
                        text=s.text, reward=s.reward)
            for s in job.self_edits
        ],
        recipe=job.recipe or {}, max_forgetting=job.max_forgetting,
        metrics=job.metrics, error=job_error(job),
        adapter_id=job.adapter_id if job.status == SUCCEEDED else None,
        parent_id=job.parent_id, alias=job.alias, attempts=job.attempts, created_at=job.created_at,
        started_at=job.started_at, finished_at=job.finished_at,
    )


def job_error(job: AdaptationJob) -> JobErrorOut | None:
    if job.error is None:
        return None
    return JobErrorOut(code=job.error_code or "job_failed", message=job.error)


def event_snapshot(job: AdaptationJob) -> dict:
    """What the events stream sends: small, without self-edit texts."""
    return {
        "id": job.id, "status": job.status, "stage": job.stage, "progress": round(job.progress or 0.0, 4),
        "error": err.model_dump() if (err := job_error(job)) else None, "adapter_id": job.adapter_id if job.status == SUCCEEDED else None,
        "attempts": job.attempts,
    }


def _mark_cancelled(db: Session, job: AdaptationJob) -> bool:
    """queued/running -> cancelled (one conditional UPDATE, so a finishing worker cannot race it)."""
    now = utcnow()
    res = db.execute(
        update(AdaptationJob)
        .where(AdaptationJob.id == job.id, AdaptationJob.status.in_((QUEUED, RUNNING)))
        .values(status=CANCELLED, stage="cancelled", finished_at=now, lease_until=None,
                error="cancelled by request", updated_at=now)
        .execution_options(synchronize_session=False)
    )
    db.commit()
    db.refresh(job)
    return res.rowcount == 1


def cancel_job(*, db: Session, job: AdaptationJob) -> AdaptationJob:
    """Cancel a queued or running job; 409 once it has finished (or finishes first)."""
    if job.status in TERMINAL:
        raise APIError(409, f"job {job.id} is already {job.status}", code="job_finished")
    if not _mark_cancelled(db, job):
        raise APIError(409, f"job {job.id} is already {job.status}", code="job_finished")
    return job


def _record_task_id(db: Session, job_id: str, task_id: str) -> None:
    db.execute(
        update(AdaptationJob).where(AdaptationJob.id == job_id)
        .values(task_id=task_id).execution_options(synchronize_session=False)
    )
    db.commit()


def queue_job(*, db: Session, settings: Settings, celery: Celery, job: AdaptationJob) -> None:
    """Send a stored job's task; a broker that cannot take it fails the job and answers 503."""
    from seal_service.queue import dispatch_adaptation

    try:
        task_id = dispatch_adaptation(celery, settings, job.id)
    except Exception as e:
        log.exception("could not queue job %s", job.id)
        job.status, job.stage, job.error, job.finished_at = "failed", "failed", f"could not queue the job: {e}", utcnow()
        job.error_code = QUEUE_UNAVAILABLE
        db.commit()
        raise APIError(503, "the job queue is unavailable; try again later", code="queue_unavailable") from None
    _record_task_id(db, job.id, task_id)
    db.refresh(job)


async def job_events(*, sessionmaker: Callable[[], Session], job_id: str, poll_s: float,
                     is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[dict]:
    """The events stream of a job: ``progress`` on every change, then ``done`` (or ``error``
    if the job disappears); stops when the client has gone."""

    def snapshot() -> dict | None:
        with sessionmaker() as s:
            job = s.get(AdaptationJob, job_id)
            return event_snapshot(job) if job is not None else None

    last = None
    while True:
        if await is_disconnected():
            return
        snap = await asyncio.to_thread(snapshot)
        if snap is None:
            yield {"event": "error", "data": json.dumps({"error": "job deleted"})}
            return
        if snap != last:
            last = snap
            terminal = snap["status"] in TERMINAL
            yield {"event": "progress", "data": json.dumps(snap)}
            if terminal:
                yield {"event": "done", "data": json.dumps(snap)}
                return
        await asyncio.sleep(poll_s)
