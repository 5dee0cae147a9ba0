"""Few-shot tasks: POST examples, the model writes its training recipe, an adapter is trained;
then solve new inputs (ARC: up to two grids each) or query the adapter like any model.

A task job is an adaptation job whose data is a task instead of documents, so the
worker, the lease, recovery, registration, events and cancel are the same machinery.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from api.deps import DbDep, PrincipalDep, SettingsDep
from api.schemas import SolveIn, SolveOut, TaskCreate, TaskOut
from api.services import jobs, tasks

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.post("", status_code=202, response_model=TaskOut,
             summary="Adapt to a few-shot task: the model writes a training recipe, an adapter is trained on it")
def create_task(body: TaskCreate, request: Request, db: DbDep, settings: SettingsDep, who: PrincipalDep) -> JSONResponse:
    job = tasks.create_task_job(db=db, settings=settings, tenant_id=who.tenant_id, body=body)
    jobs.queue_job(db=db, settings=settings, celery=request.app.state.celery, job=job)
    return JSONResponse(tasks.task_out(job).model_dump(mode="json"), status_code=202,
                        headers={"Location": f"/v1/tasks/{job.id}"})


@router.get("", summary="This tenant's task jobs, newest first")
def list_tasks(db: DbDep, who: PrincipalDep, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    rows = tasks.list_task_jobs(db=db, tenant_id=who.tenant_id, limit=limit)
    return {"object": "list", "data": [tasks.task_out(j).model_dump(mode="json") for j in rows]}


@router.get("/{job_id}", response_model=TaskOut, summary="Status, recipes, held-out grades, the adapter id")
def get_task(job_id: str, db: DbDep, who: PrincipalDep) -> TaskOut:
    return tasks.task_out(tasks.get_task_job(db=db, tenant_id=who.tenant_id, job_id=job_id))


@router.get("/{job_id}/events", summary="Server-sent events: `progress` on every change, then `done`")
def task_events(job_id: str, request: Request, db: DbDep, who: PrincipalDep, settings: SettingsDep) -> EventSourceResponse:
    tasks.get_task_job(db=db, tenant_id=who.tenant_id, job_id=job_id)  # 404 before the stream starts
    events = jobs.job_events(sessionmaker=request.app.state.sessionmaker, job_id=job_id,
                             poll_s=settings.events_poll_s, is_disconnected=request.is_disconnected)
    return EventSourceResponse(events, ping=int(max(settings.events_ping_s, 1)))


@router.post("/{job_id}/cancel", response_model=TaskOut, summary="Cancel a queued or running task job")
def cancel_task(job_id: str, db: DbDep, who: PrincipalDep) -> TaskOut:
    job = tasks.get_task_job(db=db, tenant_id=who.tenant_id, job_id=job_id)
    return tasks.task_out(jobs.cancel_job(db=db, job=job))


@router.post("/{job_id}/solve", response_model=SolveOut,
             summary="Answer new inputs with the task's adapter (ARC: up to two grids per input)")
async def solve_task(job_id: str, body: SolveIn, request: Request, db: DbDep, settings: SettingsDep,
                     who: PrincipalDep) -> SolveOut:
    return await tasks.solve(db=db, settings=settings, inference=request.app.state.inference,
                             tenant_id=who.tenant_id, job_id=job_id, inputs=body.inputs)
