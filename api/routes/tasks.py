"""Few-shot tasks: POST examples, the model writes its training recipe, an adapter is trained;
then solve new inputs (ARC: up to two grids each) or query the adapter like any model.

A task job is an adaptation job whose data is a task instead of documents, so the
worker, the lease, recovery, registration, events and cancel are the same machinery.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select

from seal_service.db.base import new_id, utcnow
from seal_service.db.models import QUEUED, SUCCEEDED, Adapter, AdaptationJob
from api.deps import DbDep, Principal, PrincipalDep, SettingsDep
from api.errors import APIError, field_error, not_found
from api.services.jobs import adapter_id_for, promoted_policy, queue_job, valid_id
from api.schemas import Progress, SelfEditOut, SolveIn, SolveOut, TaskCreate, TaskOut
from api.routes import adaptations

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])

MAX_TEXT_CHARS = 4000


def _is_grid(x: Any) -> bool:
    return isinstance(x, list)


def build_task(body: TaskCreate):  # noqa: ANN201
    """The engine's task from the request; 422 naming the bad field."""
    from seal_engine.fewshot.arc import TaskError, task_from_dict
    from seal_engine.fewshot.grids import GridError, as_grid
    from seal_engine.fewshot.text_tasks import text_task

    fmt = body.format or ("arc" if any(_is_grid(p.get("input")) for p in body.train) else "text")
    name = body.name or "task"
    for part, pairs in (("train", body.train), ("test", body.test)):
        for i, p in enumerate(pairs):
            if "input" not in p or (part == "train" and "output" not in p):
                raise field_error((part, i), "each example needs 'input'" + (" and 'output'" if part == "train" else ""))
            extra = set(p) - {"input", "output"}
            if extra:
                raise field_error((part, i), f"unknown fields: {', '.join(sorted(extra))}")
            for key in ("input", "output"):
                if key not in p:
                    continue
                if fmt == "arc":
                    try:
                        as_grid(p[key])
                    except GridError as e:
                        raise field_error((part, i, key), str(e)) from None
                elif not isinstance(p[key], str) or not p[key].strip() or len(p[key]) > MAX_TEXT_CHARS:
                    raise field_error((part, i, key), f"a non-empty string of at most {MAX_TEXT_CHARS} characters")
    try:
        if fmt == "arc":
            if not body.test:
                raise field_error(("test",), "an ARC task needs at least one test input")
            outs = [t.get("output") for t in body.test]
            solutions = outs if all(o is not None for o in outs) else None
            return task_from_dict(name, {"train": body.train, "test": [{"input": t["input"]} for t in body.test]},
                                  solutions)
        if any("output" not in t for t in body.test):
            raise field_error(("test",), "held-out text examples need an 'output' (they grade the recipes)")
        return text_task(name, body.train, body.test)
    except TaskError as e:
        raise field_error(("train",), str(e)) from None


def _task_job(db, who: Principal, job_id: str) -> AdaptationJob:  # noqa: ANN001
    job = db.get(AdaptationJob, job_id) if valid_id(job_id) else None
    if job is None or job.tenant_id != who.tenant_id or not job.task:
        raise not_found("task", job_id)
    return job


def task_out(job: AdaptationJob) -> TaskOut:
    t = (job.task or {}).get("task", {})
    return TaskOut(
        id=job.id, format=t.get("kind", "text"), name=job.name, status=job.status,
        progress=Progress(stage=job.stage, fraction=round(job.progress or 0.0, 4)),
        base_model=job.base_model, policy_id=job.policy_id, num_recipes=job.num_self_edits,
        num_train=len(t.get("train", [])), num_test=len(t.get("test", [])),
        recipes=[SelfEditOut(index=s.position, document_id=None, strategy=s.strategy, policy_id=s.policy_id,
                             text=s.text, reward=s.reward) for s in job.self_edits],
        metrics=job.metrics, error=job.error, adapter_id=job.adapter_id if job.status == SUCCEEDED else None,
        attempts=job.attempts, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
    )


@router.post("", status_code=202, response_model=TaskOut,
             summary="Adapt to a few-shot task: the model writes a training recipe, an adapter is trained on it")
def create_task(body: TaskCreate, request: Request, db: DbDep, settings: SettingsDep, who: PrincipalDep) -> JSONResponse:
    from seal_engine.fewshot.recipes import RecipeError, validate_recipe
    from seal_engine.fewshot.datasets import task_to_dict

    task = build_task(body)
    domain = "arc" if task.kind == "arc" else "text"
    recipe = None
    if body.recipe is not None:
        try:
            recipe = validate_recipe(body.recipe, domain, settings.fewshot)
        except RecipeError as e:
            raise field_error(("recipe",), e.reason) from None
    strategy = f"recipe-{domain}"
    policy = promoted_policy(db, settings.model_id, strategy) if recipe is None else None
    lora = settings.fewshot.lora.model_copy(update=body.lora.model_dump(exclude_none=True))
    job_id = new_id("job")
    job = AdaptationJob(
        id=job_id, tenant_id=who.tenant_id, name=body.name, status=QUEUED, stage="queued", progress=0.0,
        base_model=settings.model_id, strategy=strategy, policy_id=policy.id if policy else None,
        num_self_edits=body.num_recipes, lora=lora.model_dump(), seed=body.seed, adapter_id=adapter_id_for(job_id),
        attempts=0, dispatched_at=utcnow(),
        task={"task": task_to_dict(task), "recipe": recipe.model_dump() if recipe else None},
    )
    db.add(job)
    db.commit()
    queue_job(request, db, settings, job)
    return JSONResponse(task_out(job).model_dump(mode="json"), status_code=202, headers={"Location": f"/v1/tasks/{job.id}"})


@router.get("", summary="This tenant's task jobs, newest first")
def list_tasks(db: DbDep, who: PrincipalDep, limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    jobs = db.scalars(select(AdaptationJob).where(AdaptationJob.tenant_id == who.tenant_id,
                                                  AdaptationJob.task.is_not(None))
                      .order_by(AdaptationJob.created_at.desc()).limit(limit)).all()
    return {"object": "list", "data": [task_out(j).model_dump(mode="json") for j in jobs]}


@router.get("/{job_id}", response_model=TaskOut, summary="Status, recipes, held-out grades, the adapter id")
def get_task(job_id: str, db: DbDep, who: PrincipalDep) -> TaskOut:
    return task_out(_task_job(db, who, job_id))


@router.get("/{job_id}/events", summary="Server-sent events: `progress` on every change, then `done`")
def task_events(job_id: str, request: Request, db: DbDep, who: PrincipalDep, settings: SettingsDep):  # noqa: ANN201
    _task_job(db, who, job_id)
    return adaptations.adaptation_events(job_id, request, db, who, settings)


@router.post("/{job_id}/cancel", response_model=TaskOut, summary="Cancel a queued or running task job")
def cancel_task(job_id: str, db: DbDep, who: PrincipalDep) -> TaskOut:
    _task_job(db, who, job_id)
    adaptations.cancel_adaptation(job_id, db, who)
    return task_out(_task_job(db, who, job_id))


@router.post("/{job_id}/solve", response_model=SolveOut,
             summary="Answer new inputs with the task's adapter (ARC: up to two grids per input)")
async def solve_task(job_id: str, body: SolveIn, request: Request, db: DbDep, settings: SettingsDep,
                     who: PrincipalDep) -> SolveOut:
    from seal_engine.fewshot.grids import GridError, as_grid
    from seal_engine.fewshot.adapt import solve
    from seal_engine.fewshot.datasets import task_from_json

    job = _task_job(db, who, job_id)
    if job.status != SUCCEEDED:
        raise APIError(409, f"task {job_id} is {job.status}; its adapter exists once it has succeeded",
                       code="task_not_ready")
    adapter_row = db.get(Adapter, job.adapter_id)
    if adapter_row is None or adapter_row.status != "ready" or not adapter_row.storage_path:
        raise APIError(409, f"the adapter of task {job_id} was deleted", code="adapter_deleted")
    task = task_from_json(job.task["task"])
    inputs: list[Any] = []
    for i, x in enumerate(body.inputs):
        if task.kind == "arc":
            try:
                inputs.append(as_grid(x))
            except GridError as e:
                raise field_error(("inputs", i), str(e)) from None
        elif not isinstance(x, str) or not x.strip() or len(x) > MAX_TEXT_CHARS:
            raise field_error(("inputs", i), f"a non-empty string of at most {MAX_TEXT_CHARS} characters")
        else:
            inputs.append(x.strip())
    inference = request.app.state.inference
    bundle = await inference.get_bundle()
    lora = await inference.get_adapter(adapter_row.storage_path)
    outputs = await asyncio.to_thread(solve, bundle, task, lora, inputs, settings.fewshot)
    return SolveOut(task_id=job.id, adapter_id=adapter_row.id, outputs=outputs)
