"""Adaptation jobs on the API side: validate and store a request, dispatch it, report on it."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from seal_engine.knowledge.prompts import CUSTOM, STRATEGY_NAMES, UnknownStrategyError, get_strategy

from seal_service.db.base import new_id, utcnow
from seal_service.db.models import (
    CANCELLED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    AdaptationJob,
    Document,
    JobDocument,
    PolicyCheckpoint,
)
from api.deps import Principal
from api.errors import APIError, field_error, not_found
from api.schemas import AdaptationCreate, AdaptationOut, DocumentIn, Progress, SelfEditOut
from seal_service.settings import Settings

log = logging.getLogger("seal.api.jobs")

DEFAULT_STRATEGY = "implications"


_ID = re.compile(r"[\w.:-]{1,64}")


def valid_id(value: str) -> bool:
    """Ids are short and plain; anything else cannot exist (and must not reach the database)."""
    return bool(_ID.fullmatch(value))


def adapter_id_for(job_id: str) -> str:
    """Adapter ids are derived from job ids, so a job can only ever register one adapter."""
    return "adp_" + job_id.split("_", 1)[1]


def store_document(db: Session, tenant: str, doc: DocumentIn) -> Document:
    row = Document(
        id=new_id("doc"), tenant_id=tenant, title=doc.title.strip(), text=doc.text.strip(),
        sha256=hashlib.sha256(doc.text.strip().encode()).hexdigest(),
    )
    db.add(row)
    return row


RECIPE_PREFIX = "recipe-"


def policy_family(strategy: str) -> str:
    """Policies write either document self-edits ("knowledge") or task recipes ("recipe-text",
    "recipe-arc"); one checkpoint per base model and family can be promoted."""
    return strategy if strategy.startswith(RECIPE_PREFIX) else "knowledge"


def same_family(strategy: str):  # noqa: ANN201
    """SQL condition: a checkpoint of ``strategy``'s family."""
    family = policy_family(strategy)
    if family == "knowledge":
        return PolicyCheckpoint.strategy.not_like(f"{RECIPE_PREFIX}%")
    return PolicyCheckpoint.strategy == family


def promoted_policy(db: Session, base_model: str, family: str = "knowledge") -> PolicyCheckpoint | None:
    return db.scalar(
        select(PolicyCheckpoint)
        .where(PolicyCheckpoint.base_model == base_model, PolicyCheckpoint.promoted.is_(True), same_family(family))
        .order_by(PolicyCheckpoint.promoted_at.desc())
        .limit(1)
    )


def create_job(db: Session, settings: Settings, who: Principal, body: AdaptationCreate) -> AdaptationJob:
    """Validate against the server's limits, store documents and the job (status queued). Caller commits."""
    base_model = settings.model_id
    if body.base_model is not None and body.base_model != base_model:
        raise field_error(("base_model",), f"unknown base model {body.base_model!r}; this server adapts {base_model!r}")
    if len(body.documents) > settings.max_documents:
        raise field_error(("documents",), f"at most {settings.max_documents} documents per job")
    if body.num_self_edits > settings.max_self_edits:
        raise field_error(("num_self_edits",), f"at most {settings.max_self_edits} self-edits per document")
    if body.eval_questions is not None and len(body.eval_questions) > settings.max_eval_questions:
        raise field_error(("eval_questions",), f"at most {settings.max_eval_questions} questions")

    policy: PolicyCheckpoint | None = None
    strategy = body.strategy
    if strategy is None and body.template is not None:
        strategy = CUSTOM
    if strategy is None:
        policy = promoted_policy(db, base_model)
        strategy = policy.strategy if policy is not None else DEFAULT_STRATEGY
    try:
        get_strategy(strategy, body.template if strategy == CUSTOM else None)
    except UnknownStrategyError as e:
        loc = "template" if strategy == CUSTOM else "strategy"
        raise field_error((loc,), str(e) if loc == "template" else
                          f"unknown strategy {strategy!r}; choose one of {', '.join([*STRATEGY_NAMES, CUSTOM])}") from None
    if body.template is not None and strategy != CUSTOM:
        raise field_error(("template",), "a template needs strategy 'custom'")

    lora = settings.lora.model_copy(update=body.lora.model_dump(exclude_none=True))
    docs: list[Document] = []
    for i, item in enumerate(body.documents):
        if item.id is not None:
            row = db.get(Document, item.id) if valid_id(item.id) else None
            if row is None or row.tenant_id != who.tenant_id:
                raise field_error(("documents", i, "id"), f"unknown document id {item.id!r}")
        else:
            assert item.text is not None
            if len(item.text) > settings.max_document_chars:
                raise field_error(("documents", i, "text"), f"longer than {settings.max_document_chars} characters")
            row = store_document(db, who.tenant_id, DocumentIn(title=item.title, text=item.text))
        docs.append(row)

    job_id = new_id("job")
    job = AdaptationJob(
        id=job_id, tenant_id=who.tenant_id, name=body.name, status=QUEUED, stage="queued", progress=0.0,
        base_model=base_model, strategy=strategy, template=body.template if strategy == CUSTOM else None,
        policy_id=policy.id if policy else None, num_self_edits=body.num_self_edits, lora=lora.model_dump(),
        eval_questions=[q.model_dump() for q in body.eval_questions] if body.eval_questions else None,
        seed=body.seed, adapter_id=adapter_id_for(job_id), attempts=0,
        # Set before the message is sent, so it can never look newer than the worker's claim.
        dispatched_at=utcnow(),
    )
    db.add(job)
    db.flush()
    for pos, d in enumerate(docs):
        db.add(JobDocument(job_id=job_id, position=pos, document_id=d.id))
    db.flush()
    return job


def get_job(db: Session, who: Principal, job_id: str) -> AdaptationJob:
    job = db.get(AdaptationJob, job_id) if valid_id(job_id) else None
    if job is None or job.tenant_id != who.tenant_id:
        raise not_found("adaptation", job_id)
    return job


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
        metrics=job.metrics, error=job.error,
        adapter_id=job.adapter_id if job.status == SUCCEEDED else None,
        attempts=job.attempts, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
    )


def event_snapshot(job: AdaptationJob) -> dict:
    """What the events stream sends: small, without self-edit texts."""
    return {
        "id": job.id, "status": job.status, "stage": job.stage, "progress": round(job.progress or 0.0, 4),
        "error": job.error, "adapter_id": job.adapter_id if job.status == SUCCEEDED else None,
        "attempts": job.attempts,
    }


def cancel_job(db: Session, job: AdaptationJob) -> bool:
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


def mark_dispatched(db: Session, job_id: str, task_id: str) -> None:
    db.execute(
        update(AdaptationJob).where(AdaptationJob.id == job_id)
        .values(task_id=task_id).execution_options(synchronize_session=False)
    )
    db.commit()


def adapter_files(path: str | Path) -> list[str]:
    p = Path(path)
    if not p.is_dir():
        return []
    return sorted(f.name for f in p.iterdir() if f.is_file() and not f.name.startswith("."))


def queue_job(request, db: Session, settings: Settings, job: AdaptationJob) -> None:  # noqa: ANN001
    """Send a stored job's task; a broker that cannot take it fails the job and answers 503."""
    from seal_service.queue import dispatch_adaptation

    try:
        task_id = dispatch_adaptation(request.app.state.celery, settings, job.id)
    except Exception as e:
        log.exception("could not queue job %s", job.id)
        job.status, job.stage, job.error, job.finished_at = "failed", "failed", f"could not queue the job: {e}", utcnow()
        db.commit()
        raise APIError(503, "the job queue is unavailable; try again later", code="queue_unavailable") from None
    mark_dispatched(db, job.id, task_id)
    db.refresh(job)
