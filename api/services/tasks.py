"""Few-shot task jobs: build the engine's task from a request (422 naming the bad field),
store and queue the job, report on it, solve new inputs with its adapter.

A task job is an adaptation job whose data is a task instead of documents, so the
worker, the lease, recovery, registration, events and cancel are the same machinery
(:mod:`api.services.jobs`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import APIError, field_error, not_found
from api.schemas import Progress, SelfEditOut, SolveOut, TaskCreate, TaskOut, valid_id
from api.services.jobs import adapter_id_for, check_job_quota, job_error
from api.services.policies import promoted_policy
from seal_engine.errors import InputError
from seal_service.db.base import new_id, utcnow
from seal_service.db.models import QUEUED, SUCCEEDED, AdaptationJob, Adapter
from seal_service.settings import Settings

if TYPE_CHECKING:
    from api.backends import InferenceService
    from seal_engine.fewshot.arc import ArcTask
    from seal_engine.fewshot.text_tasks import TextTask

MAX_TEXT_CHARS = 4000


def _is_grid(x: Any) -> bool:
    return isinstance(x, list)


def build_task(body: TaskCreate) -> ArcTask | TextTask:
    """The engine's task from the request; 422 naming the bad field."""
    from seal_engine.fewshot.arc import task_from_dict
    from seal_engine.fewshot.grids import as_grid
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
                    except InputError as e:
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
    except InputError as e:
        raise field_error(("train",), str(e)) from None


def get_task_job(*, db: Session, tenant_id: str, job_id: str) -> AdaptationJob:
    """The tenant's task job, else 404 (an adaptation job's id is just as unknown here)."""
    job = db.get(AdaptationJob, job_id) if valid_id(job_id) else None
    if job is None or job.tenant_id != tenant_id or not job.task:
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
        metrics=job.metrics, error=job_error(job), adapter_id=job.adapter_id if job.status == SUCCEEDED else None,
        attempts=job.attempts, created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
    )


def create_task_job(*, db: Session, settings: Settings, tenant_id: str, body: TaskCreate) -> AdaptationJob:
    """Validate the task (and a given recipe), store the job (status queued) and commit."""
    from seal_engine.fewshot.datasets import task_to_dict
    from seal_engine.fewshot.recipes import validate_recipe

    task = build_task(body)
    check_job_quota(db=db, settings=settings, tenant_id=tenant_id)
    domain = "arc" if task.kind == "arc" else "text"
    recipe = None
    if body.recipe is not None:
        try:
            recipe = validate_recipe(body.recipe, domain, settings.fewshot)
        except InputError as e:
            raise field_error(("recipe",), str(e)) from None
    strategy = f"recipe-{domain}"
    policy = promoted_policy(db=db, base_model=settings.model_id, family=strategy) if recipe is None else None
    lora = settings.fewshot.lora.model_copy(update=body.lora.model_dump(exclude_none=True))
    job_id = new_id("job")
    job = AdaptationJob(
        id=job_id, tenant_id=tenant_id, name=body.name, status=QUEUED, stage="queued", progress=0.0,
        base_model=settings.model_id, strategy=strategy, policy_id=policy.id if policy else None,
        num_self_edits=body.num_recipes, lora=lora.model_dump(), seed=body.seed, adapter_id=adapter_id_for(job_id),
        attempts=0, dispatched_at=utcnow(),
        task={"task": task_to_dict(task), "recipe": recipe.model_dump() if recipe else None},
    )
    db.add(job)
    db.commit()
    return job


def list_task_jobs(*, db: Session, tenant_id: str, limit: int) -> list[AdaptationJob]:
    """The tenant's task jobs, newest first."""
    return list(db.scalars(select(AdaptationJob).where(AdaptationJob.tenant_id == tenant_id,
                                                       AdaptationJob.task.is_not(None))
                           .order_by(AdaptationJob.created_at.desc()).limit(limit)))


async def solve(*, db: Session, settings: Settings, inference: InferenceService, tenant_id: str, job_id: str,
                inputs: list[Any]) -> SolveOut:
    """Answer ``inputs`` with the task's adapter (409 until it exists; 422 naming a bad input)."""
    from seal_engine.fewshot.adapt import solve as solve_task
    from seal_engine.fewshot.datasets import task_from_json
    from seal_engine.fewshot.grids import as_grid

    job = get_task_job(db=db, tenant_id=tenant_id, job_id=job_id)
    if job.status != SUCCEEDED:
        raise APIError(409, f"task {job_id} is {job.status}; its adapter exists once it has succeeded",
                       code="task_not_ready")
    adapter_row = db.get(Adapter, job.adapter_id)
    if adapter_row is None or adapter_row.status != "ready" or not adapter_row.storage_path:
        raise APIError(409, f"the adapter of task {job_id} was deleted", code="adapter_deleted")
    task = task_from_json(job.task["task"])
    parsed: list[Any] = []
    for i, x in enumerate(inputs):
        if task.kind == "arc":
            try:
                parsed.append(as_grid(x))
            except InputError as e:
                raise field_error(("inputs", i), str(e)) from None
        elif not isinstance(x, str) or not x.strip() or len(x) > MAX_TEXT_CHARS:
            raise field_error(("inputs", i), f"a non-empty string of at most {MAX_TEXT_CHARS} characters")
        else:
            parsed.append(x.strip())
    bundle = await inference.get_bundle()
    lora = await inference.get_adapter(adapter_row.storage_path)
    outputs = await asyncio.to_thread(solve_task, bundle, task, lora, parsed, settings.fewshot)
    return SolveOut(task_id=job.id, adapter_id=adapter_row.id, outputs=outputs)
