"""Adaptation jobs: create (202), inspect, follow (server-sent events), cancel."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sse_starlette import EventSourceResponse

from seal_service.db.models import TERMINAL, AdaptationJob
from api.deps import DbDep, PrincipalDep, SettingsDep
from api.errors import APIError
from api.services.jobs import cancel_job, create_job, event_snapshot, get_job, job_out, queue_job
from api.schemas import AdaptationCreate, AdaptationList, AdaptationOut

log = logging.getLogger("seal.api")
router = APIRouter(prefix="/v1/adaptations", tags=["adaptations"])


@router.post("", status_code=202, response_model=AdaptationOut,
             summary="Adapt the model to documents: self-edits, LoRA training, evaluation, registration")
def create_adaptation(body: AdaptationCreate, request: Request, db: DbDep, settings: SettingsDep,
                      who: PrincipalDep) -> JSONResponse:
    job = create_job(db, settings, who, body)
    db.commit()
    queue_job(request, db, settings, job)
    out = job_out(job)
    return JSONResponse(out.model_dump(mode="json"), status_code=202,
                        headers={"Location": f"/v1/adaptations/{job.id}"})


@router.get("", response_model=AdaptationList, summary="This tenant's jobs, newest first")
def list_adaptations(db: DbDep, who: PrincipalDep,
                     limit: Annotated[int, Query(ge=1, le=100)] = 20,
                     status: Annotated[str | None, Query(pattern="^[a-z]{1,16}$")] = None) -> AdaptationList:
    q = select(AdaptationJob).where(AdaptationJob.tenant_id == who.tenant_id)
    if status:
        q = q.where(AdaptationJob.status == status)
    jobs = db.scalars(q.order_by(AdaptationJob.created_at.desc()).limit(limit)).all()
    return AdaptationList(data=[job_out(j) for j in jobs])


@router.get("/{job_id}", response_model=AdaptationOut, summary="Status, progress, self-edits, metrics, error")
def get_adaptation(job_id: str, db: DbDep, who: PrincipalDep) -> AdaptationOut:
    return job_out(get_job(db, who, job_id))


@router.post("/{job_id}/cancel", response_model=AdaptationOut,
             summary="Cancel a queued or running job (a running one stops at its next progress step)")
def cancel_adaptation(job_id: str, db: DbDep, who: PrincipalDep) -> AdaptationOut:
    job = get_job(db, who, job_id)
    if job.status in TERMINAL:
        raise APIError(409, f"job {job_id} is already {job.status}", code="job_finished")
    if not cancel_job(db, job):
        raise APIError(409, f"job {job_id} is already {job.status}", code="job_finished")
    return job_out(job)


@router.get("/{job_id}/events", summary="Server-sent events: `progress` on every change, then `done`",
            response_class=EventSourceResponse)
def adaptation_events(job_id: str, request: Request, db: DbDep, who: PrincipalDep,
                      settings: SettingsDep) -> EventSourceResponse:
    get_job(db, who, job_id)  # 404 before the stream starts
    factory = request.app.state.sessionmaker

    def snapshot() -> dict | None:
        with factory() as s:
            job = s.get(AdaptationJob, job_id)
            return event_snapshot(job) if job is not None else None

    async def events():
        last = None
        while True:
            if await request.is_disconnected():
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
            await asyncio.sleep(settings.events_poll_s)

    return EventSourceResponse(events(), ping=int(max(settings.events_ping_s, 1)))
