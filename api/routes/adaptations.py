"""Adaptation jobs: create (202), inspect, follow (server-sent events), cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from api.deps import DbDep, PrincipalDep, SettingsDep
from api.schemas import AdaptationCreate, AdaptationList, AdaptationOut
from api.schemas.jobs import JobStatus
from api.services import jobs

router = APIRouter(prefix="/v1/adaptations", tags=["adaptations"])


@router.post("", status_code=202, response_model=AdaptationOut,
             summary="Adapt the model to documents: self-edits, LoRA training, evaluation, registration")
def create_adaptation(body: AdaptationCreate, request: Request, db: DbDep, settings: SettingsDep,
                      who: PrincipalDep) -> JSONResponse:
    job = jobs.create_job(db=db, settings=settings, tenant_id=who.tenant_id, body=body)
    db.commit()
    jobs.queue_job(db=db, settings=settings, celery=request.app.state.celery, job=job)
    out = jobs.job_out(job)
    return JSONResponse(out.model_dump(mode="json"), status_code=202,
                        headers={"Location": f"/v1/adaptations/{job.id}"})


@router.get("", response_model=AdaptationList, summary="This tenant's jobs, newest first")
def list_adaptations(db: DbDep, who: PrincipalDep,
                     limit: Annotated[int, Query(ge=1, le=100)] = 20,
                     status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
                     ) -> AdaptationList:
    rows = jobs.list_jobs(db=db, tenant_id=who.tenant_id, limit=limit, status=status)
    return AdaptationList(data=[jobs.job_out(j) for j in rows])


@router.get("/{job_id}", response_model=AdaptationOut, summary="Status, progress, self-edits, metrics, error")
def get_adaptation(job_id: str, db: DbDep, who: PrincipalDep) -> AdaptationOut:
    return jobs.job_out(jobs.get_job(db=db, tenant_id=who.tenant_id, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=AdaptationOut,
             summary="Cancel a queued or running job (a running one stops at its next progress step)")
def cancel_adaptation(job_id: str, db: DbDep, who: PrincipalDep) -> AdaptationOut:
    job = jobs.get_job(db=db, tenant_id=who.tenant_id, job_id=job_id)
    return jobs.job_out(jobs.cancel_job(db=db, job=job))


@router.get("/{job_id}/events", summary="Server-sent events: `progress` on every change, then `done`",
            response_class=EventSourceResponse)
def adaptation_events(job_id: str, request: Request, db: DbDep, who: PrincipalDep,
                      settings: SettingsDep) -> EventSourceResponse:
    jobs.get_job(db=db, tenant_id=who.tenant_id, job_id=job_id)  # 404 before the stream starts
    events = jobs.job_events(sessionmaker=request.app.state.sessionmaker, job_id=job_id,
                             poll_s=settings.events_poll_s, is_disconnected=request.is_disconnected)
    return EventSourceResponse(events, ping=int(max(settings.events_ping_s, 1)))
