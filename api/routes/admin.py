"""Admin endpoints (admin keys only; 403 for others): tenants, keys, workers, jobs, self-edit policies."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ConfigDict, Field
from sqlalchemy import func, select, update

from seal_engine.rl.loop import RLConfig

from seal_service.db.base import new_id, utcnow
from seal_service.db.models import (
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    AdaptationJob,
    ApiKey,
    PolicyCheckpoint,
    RLRun,
    RLSample,
    Tenant,
    WorkerHeartbeat,
)
from api.deps import AdminDep, DbDep, SettingsDep
from api.errors import APIError, field_error, not_found
from api.services.jobs import job_out, policy_family, same_family, valid_id
from seal_service.keys import TenantNameError, create_key
from api.schemas import AdaptationList, KeyCreate, KeyOut, PolicyList, PolicyOut, TenantOut, WorkerOut

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get("/tenants", response_model=list[TenantOut], summary="Tenants and how many keys each has")
def list_tenants(db: DbDep, _admin: AdminDep) -> list[TenantOut]:
    counts = dict(db.execute(select(ApiKey.tenant_id, func.count()).where(ApiKey.revoked_at.is_(None))
                             .group_by(ApiKey.tenant_id)).all())
    return [TenantOut(id=t.id, created_at=t.created_at, keys=counts.get(t.id, 0))
            for t in db.scalars(select(Tenant).order_by(Tenant.id))]


@router.post("/keys", response_model=KeyOut, status_code=201, summary="A new key (the tenant is created if needed)")
def new_key(body: KeyCreate, db: DbDep, _admin: AdminDep) -> KeyOut:
    try:
        k = create_key(db, body.tenant, admin=body.admin, name=body.name)
    except TenantNameError as e:
        raise field_error(("tenant",), str(e)) from None
    db.commit()
    return KeyOut(id=k.id, tenant=k.tenant_id, admin=k.is_admin, key=k.key)


@router.get("/workers", response_model=list[WorkerOut], summary="Workers and their last heartbeat")
def list_workers(db: DbDep, _admin: AdminDep) -> list[WorkerOut]:
    rows = db.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.last_seen.desc())).all()
    return [WorkerOut(id=w.id, hostname=w.hostname, pid=w.pid, queue=w.queue, base_model=w.base_model,
                      started_at=w.started_at, last_seen=w.last_seen) for w in rows]


@router.get("/jobs", response_model=AdaptationList, summary="Jobs of every tenant, newest first")
def list_jobs(db: DbDep, _admin: AdminDep, limit: Annotated[int, Query(ge=1, le=500)] = 50,
              status: Annotated[str | None, Query(pattern="^[a-z]{1,16}$")] = None) -> AdaptationList:
    q = select(AdaptationJob)
    if status:
        q = q.where(AdaptationJob.status == status)
    return AdaptationList(data=[job_out(j) for j in db.scalars(q.order_by(AdaptationJob.created_at.desc()).limit(limit))])


def _policy_out(p: PolicyCheckpoint) -> PolicyOut:
    return PolicyOut(id=p.id, rl_run_id=p.rl_run_id, base_model=p.base_model, strategy=p.strategy,
                     iteration=p.iteration, metrics=p.metrics, promoted=p.promoted, promoted_at=p.promoted_at,
                     created_at=p.created_at)


@router.get("/policies", response_model=PolicyList, summary="Self-edit policy checkpoints, newest first")
def list_policies(db: DbDep, _admin: AdminDep, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                  rl_run_id: Annotated[str | None, Query(max_length=64)] = None) -> PolicyList:
    q = select(PolicyCheckpoint)
    if rl_run_id:
        q = q.where(PolicyCheckpoint.rl_run_id == rl_run_id)
    rows = db.scalars(q.order_by(PolicyCheckpoint.created_at.desc(), PolicyCheckpoint.iteration.desc()).limit(limit))
    return PolicyList(data=[_policy_out(p) for p in rows])


@router.post("/policies/{checkpoint}/promote", response_model=PolicyOut,
             summary="Make a checkpoint the default self-edit writer for new adaptations of its base model")
def promote_policy(checkpoint: str, db: DbDep, _admin: AdminDep) -> PolicyOut:
    row = db.get(PolicyCheckpoint, checkpoint) if valid_id(checkpoint) else None
    if row is None:
        raise not_found("policy", checkpoint)
    if not row.storage_path or not (Path(row.storage_path) / "adapter_model.safetensors").is_file():
        raise APIError(409, f"policy {checkpoint!r} has no stored weights; it cannot write self-edits",
                       code="policy_without_weights")
    now = utcnow()
    # At most one promoted checkpoint per base model and family (self-edit writers, recipe writers).
    db.execute(update(PolicyCheckpoint)
               .where(PolicyCheckpoint.base_model == row.base_model, PolicyCheckpoint.id != row.id,
                      same_family(row.strategy))
               .values(promoted=False).execution_options(synchronize_session=False))
    row.promoted = True
    row.promoted_at = now
    db.commit()
    db.refresh(row)
    return _policy_out(row)


# --- RL runs ---------------------------------------------------------------------------------



class RLRunCreate(RLConfig):
    """An RL run: the engine's RLConfig (P=passages, N=samples, R=repeats, ...) plus its data."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | None = Field(None, description="a train.json-style file of passages with questions; for "
                                "task runs an ARC challenges file, a text-task file, or builtin:text-suite")
    documents: list[dict[str, Any]] | None = Field(None, description="uploaded passages: {title, text, questions}")
    tasks: list[dict[str, Any]] | None = Field(None, description="uploaded few-shot tasks: {name?, train, test}")
    solutions: str | None = Field(None, description="ARC solutions file (default: the one beside the challenges)")
    init_policy_id: str | None = Field(None, description="start from this policy checkpoint (default: base model)")


def _rl_out(db, run: RLRun) -> dict[str, Any]:  # noqa: ANN001
    samples = db.scalar(select(func.count()).select_from(RLSample).where(RLSample.rl_run_id == run.id))
    rewarded = db.scalar(select(func.count()).select_from(RLSample)
                         .where(RLSample.rl_run_id == run.id, RLSample.reward.is_not(None)))
    m = run.metrics or {}
    return {
        "id": run.id, "object": "rl_run", "status": run.status, "stage": run.stage,
        "progress": round(run.progress or 0.0, 4), "base_model": run.base_model, "strategy": run.strategy,
        "config": {k: v for k, v in (run.config or {}).items() if k != "passages_data"},
        "iterations": m.get("iterations", []), "curve": m.get("curve", {"mean_reward": [], "best_of_n_reward": []}),
        "checkpoints": m.get("checkpoints", []), "samples": samples, "rewarded_samples": rewarded,
        "error": run.error, "created_at": run.created_at.isoformat() if run.created_at else None,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }


def _get_run(db, run_id: str) -> RLRun:  # noqa: ANN001
    run = db.get(RLRun, run_id) if valid_id(run_id) else None
    if run is None:
        raise not_found("rl run", run_id)
    return run


def _send_step(request: Request, settings, run: RLRun) -> None:  # noqa: ANN001
    from seal_service.queue import dispatch_rl
    from seal_service.queue import STEP, mark_dispatched

    try:
        dispatch_rl(request.app.state.celery, settings, "step", [run.id])
    except Exception:
        raise APIError(503, "the job queue is unavailable; try again later (POST .../resume)",
                       code="queue_unavailable") from None
    # Recorded so the workers' recovery sweep can tell a message that never arrived.
    mark_dispatched(settings, run.id, int((run.metrics or {}).get("iteration", 0)), [STEP])


@router.post("/rl-runs", status_code=202, summary="Start a ReST-EM run that trains the self-edit policy")
def create_rl_run(body: RLRunCreate, request: Request, db: DbDep, settings: SettingsDep, admin: AdminDep) -> JSONResponse:
    rl = RLConfig.model_validate(body.model_dump(include=set(RLConfig.model_fields)))
    config: dict[str, Any] = {"rl": rl.model_dump()}
    strategy = body.strategy
    if rl.is_task:
        config.update(_task_pool(body, rl.task))
        strategy = f"recipe-{rl.task}"
    else:
        config.update(_document_pool(body))
    if body.init_policy_id is not None:
        init = db.get(PolicyCheckpoint, body.init_policy_id)
        if init is None:
            raise field_error(("init_policy_id",), f"unknown policy {body.init_policy_id!r}")
        if policy_family(init.strategy) != policy_family(strategy):
            raise field_error(("init_policy_id",), f"policy {init.id!r} writes {init.strategy}, not {strategy}")
        config["init_policy_id"] = body.init_policy_id
    run = RLRun(id=new_id("rl"), tenant_id=admin.tenant_id, status=QUEUED, stage="queued", progress=0.0,
                base_model=settings.model_id, strategy=strategy, config=config, metrics={"iteration": 0})
    db.add(run)
    db.commit()
    _send_step(request, settings, run)
    db.refresh(run)
    return JSONResponse(_rl_out(db, run), status_code=202, headers={"Location": f"/v1/admin/rl-runs/{run.id}"})


def _task_pool(body: RLRunCreate, kind: str) -> dict[str, Any]:
    """The few-shot tasks of a task run (validated now: 422 rather than a failed run)."""
    from seal_engine.fewshot.arc import TaskError
    from seal_engine.fewshot.grids import GridError
    from seal_engine.fewshot.datasets import gradable, load_task_dataset, task_to_dict, tasks_from_uploads

    if body.documents is not None:
        raise field_error(("documents",), "a task run takes 'tasks' or 'dataset', not documents")
    if (body.dataset is None) == (body.tasks is None):
        raise field_error(("dataset",), "give exactly one of 'dataset' (a file path) or 'tasks'")
    loc = ("dataset",) if body.dataset is not None else ("tasks",)
    out: dict[str, Any] = {}
    try:
        if body.dataset is not None:
            source = body.dataset if body.dataset.startswith("builtin:") else str(Path(body.dataset).expanduser().resolve())
            tasks = load_task_dataset(kind, source, body.solutions)
            out = {"dataset": source, "solutions": body.solutions}
        else:
            tasks = tasks_from_uploads(kind, body.tasks or [])
            out = {"tasks_data": [task_to_dict(t) for t in tasks]}
    except (TaskError, GridError) as e:
        raise field_error(loc, str(e)) from None
    if not any(gradable(t) for t in tasks):
        raise field_error(loc, "no task has held-out outputs to reward the recipes with")
    return out


def _document_pool(body: RLRunCreate) -> dict[str, Any]:
    from seal_engine.knowledge.documents import DocumentError, document_from_dict, load_documents

    if body.tasks is not None or body.solutions is not None:
        raise field_error(("tasks",), "'tasks' and 'solutions' are for task runs (task: text or arc)")
    if (body.dataset is None) == (body.documents is None):
        raise field_error(("dataset",), "give exactly one of 'dataset' (a file path) or 'documents'")
    config: dict[str, Any] = {}
    try:
        if body.dataset is not None:
            path = Path(body.dataset).expanduser().resolve()
            docs = load_documents(path)
            config["dataset"] = str(path)
        else:
            docs = [document_from_dict(d, f"documents[{i}]") for i, d in enumerate(body.documents or [])]
            config["passages_data"] = [{"title": d.title, "text": d.text, "questions": [
                {"question": q.question, "answer": q.answer} for q in d.questions]} for d in docs]
    except DocumentError as e:
        raise field_error(("dataset" if body.dataset is not None else "documents",), str(e)) from None
    if not any(d.questions for d in docs):
        raise field_error(("dataset" if body.dataset is not None else "documents",), "no passage has questions")
    return config


@router.get("/rl-runs", summary="RL runs, newest first")
def list_rl_runs(db: DbDep, _admin: AdminDep, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> dict[str, Any]:
    runs = db.scalars(select(RLRun).order_by(RLRun.created_at.desc()).limit(limit)).all()
    return {"object": "list", "data": [_rl_out(db, r) for r in runs]}


@router.get("/rl-runs/{run_id}", summary="Status, per-iteration metrics and the reward curve")
def get_rl_run(run_id: str, db: DbDep, _admin: AdminDep) -> dict[str, Any]:
    return _rl_out(db, _get_run(db, run_id))


@router.get("/rl-runs/{run_id}/samples", summary="Every sampled self-edit with its prompt, policy, seeds and reward terms")
def list_rl_samples(run_id: str, db: DbDep, _admin: AdminDep,
                    iteration: Annotated[int | None, Query(ge=0)] = None) -> dict[str, Any]:
    _get_run(db, run_id)
    q = select(RLSample).where(RLSample.rl_run_id == run_id)
    if iteration is not None:
        q = q.where(RLSample.iteration == iteration)
    rows = db.scalars(q.order_by(RLSample.iteration, RLSample.passage, RLSample.sample)).all()
    return {"object": "list", "data": [
        {"iteration": r.iteration, "passage": r.passage, "sample": r.sample, "title": r.title, "prompt": r.prompt,
         "text": r.text, "policy_id": r.policy_id, "seeds": r.seeds, "rewards": r.rewards, "reward": r.reward}
        for r in rows]}


@router.get("/rl-runs/{run_id}/events", summary="Server-sent events: the run's state whenever it changes")
async def rl_run_events(run_id: str, request: Request, db: DbDep, _admin: AdminDep) -> StreamingResponse:
    _get_run(db, run_id)
    maker = request.app.state.sessionmaker

    def snapshot() -> dict[str, Any]:
        with maker() as s:
            return _rl_out(s, s.get(RLRun, run_id))

    async def stream():  # noqa: ANN202
        last = None
        while True:
            state = await asyncio.to_thread(snapshot)
            key = json.dumps({k: state[k] for k in ("status", "stage", "progress", "rewarded_samples", "checkpoints")})
            if key != last:
                last = key
                yield f"event: state\ndata: {json.dumps(state)}\n\n"
            if state["status"] in TERMINAL or await request.is_disconnected():
                yield "event: end\ndata: {}\n\n"
                return
            await asyncio.sleep(1.0)

    return StreamingResponse(stream(), media_type="text/event-stream")


@router.post("/rl-runs/{run_id}/cancel", summary="Stop a run (finished evaluations and checkpoints are kept)")
def cancel_rl_run(run_id: str, db: DbDep, _admin: AdminDep) -> dict[str, Any]:
    run = _get_run(db, run_id)
    if run.status not in TERMINAL:
        run.status, run.stage, run.finished_at = "cancelled", "cancelled", utcnow()
        db.commit()
    return _rl_out(db, run)


@router.post("/rl-runs/{run_id}/resume", status_code=202,
             summary="Continue a cancelled, failed or stalled run from its last completed evaluation")
def resume_rl_run(run_id: str, request: Request, db: DbDep, settings: SettingsDep, _admin: AdminDep) -> dict[str, Any]:
    run = _get_run(db, run_id)
    if run.status == SUCCEEDED:
        raise APIError(409, f"rl run {run_id!r} has finished", code="rl_run_finished")
    if run.status != RUNNING:
        run.status, run.stage, run.error, run.finished_at = QUEUED, "queued", None, None
    run.attempts = (run.attempts or 0) + 1
    db.commit()
    _send_step(request, settings, run)
    return _rl_out(db, run)
