"""RL runs (ReST-EM training of the self-edit or recipe writer): validate and store a run,
send its steps, report on it (state, samples, an events stream), cancel and resume it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import APIError, field_error, not_found
from api.schemas import RLRunCreate, valid_id
from api.services.policies import policy_family
from seal_engine.errors import InputError
from seal_engine.rl.config import RLConfig
from seal_service.db.base import new_id, utcnow
from seal_service.db.models import QUEUED, RUNNING, SUCCEEDED, TERMINAL, PolicyCheckpoint, RLRun, RLSample
from seal_service.settings import Settings

if TYPE_CHECKING:
    from celery import Celery


def rl_run_out(*, db: Session, run: RLRun) -> dict[str, Any]:
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


def get_run(*, db: Session, run_id: str) -> RLRun:
    run = db.get(RLRun, run_id) if valid_id(run_id) else None
    if run is None:
        raise not_found("rl run", run_id)
    return run


def _send_step(*, celery: Celery, settings: Settings, run: RLRun) -> None:
    from seal_service.queue import STEP, dispatch_rl, mark_dispatched

    try:
        dispatch_rl(celery, settings, "step", [run.id])
    except Exception:  # noqa: BLE001 (whatever the broker raises, the answer is 503)
        raise APIError(503, "the job queue is unavailable; try again later (POST .../resume)",
                       code="queue_unavailable") from None
    # Recorded so the workers' recovery sweep can tell a message that never arrived.
    mark_dispatched(settings, run.id, int((run.metrics or {}).get("iteration", 0)), [STEP])


def create_run(*, db: Session, settings: Settings, celery: Celery, tenant_id: str, body: RLRunCreate) -> RLRun:
    """Validate the run's data now (422 rather than a failed run), store the run and send its first step."""
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
    run = RLRun(id=new_id("rl"), tenant_id=tenant_id, status=QUEUED, stage="queued", progress=0.0,
                base_model=settings.model_id, strategy=strategy, config=config, metrics={"iteration": 0})
    db.add(run)
    db.commit()
    _send_step(celery=celery, settings=settings, run=run)
    db.refresh(run)
    return run


def _task_pool(body: RLRunCreate, kind: str) -> dict[str, Any]:
    """The few-shot tasks of a task run (validated now: 422 rather than a failed run)."""
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
    except InputError as e:
        raise field_error(loc, str(e)) from None
    if not any(gradable(t) for t in tasks):
        raise field_error(loc, "no task has held-out outputs to reward the recipes with")
    return out


def _document_pool(body: RLRunCreate) -> dict[str, Any]:
    from seal_engine.knowledge.documents import document_from_dict, load_documents

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
    except InputError as e:
        raise field_error(("dataset" if body.dataset is not None else "documents",), str(e)) from None
    if not any(d.questions for d in docs):
        raise field_error(("dataset" if body.dataset is not None else "documents",), "no passage has questions")
    return config


def list_runs(*, db: Session, limit: int) -> list[dict[str, Any]]:
    """RL runs, newest first."""
    runs = db.scalars(select(RLRun).order_by(RLRun.created_at.desc()).limit(limit)).all()
    return [rl_run_out(db=db, run=r) for r in runs]


def list_samples(*, db: Session, run_id: str, iteration: int | None = None) -> list[dict[str, Any]]:
    """Every sampled self-edit of a run (of one iteration if given) with its prompt, policy, seeds and rewards."""
    get_run(db=db, run_id=run_id)
    q = select(RLSample).where(RLSample.rl_run_id == run_id)
    if iteration is not None:
        q = q.where(RLSample.iteration == iteration)
    rows = db.scalars(q.order_by(RLSample.iteration, RLSample.passage, RLSample.sample)).all()
    return [{"iteration": r.iteration, "passage": r.passage, "sample": r.sample, "title": r.title,
             "prompt": r.prompt, "text": r.text, "policy_id": r.policy_id, "seeds": r.seeds, "rewards": r.rewards,
             "reward": r.reward} for r in rows]


async def run_events(*, sessionmaker: Callable[[], Session], run_id: str,
                     is_disconnected: Callable[[], Awaitable[bool]]) -> AsyncIterator[str]:
    """Server-sent events: ``state`` whenever the run's state changes, ``end`` once it has
    finished (or the client has gone)."""

    def snapshot() -> dict[str, Any]:
        with sessionmaker() as s:
            return rl_run_out(db=s, run=s.get(RLRun, run_id))

    last = None
    while True:
        state = await asyncio.to_thread(snapshot)
        key = json.dumps({k: state[k] for k in ("status", "stage", "progress", "rewarded_samples", "checkpoints")})
        if key != last:
            last = key
            yield f"event: state\ndata: {json.dumps(state)}\n\n"
        if state["status"] in TERMINAL or await is_disconnected():
            yield "event: end\ndata: {}\n\n"
            return
        await asyncio.sleep(1.0)


def cancel_run(*, db: Session, run_id: str) -> RLRun:
    """Stop a run (finished evaluations and checkpoints are kept); a finished run is left as it is."""
    run = get_run(db=db, run_id=run_id)
    if run.status not in TERMINAL:
        run.status, run.stage, run.finished_at = "cancelled", "cancelled", utcnow()
        db.commit()
    return run


def resume_run(*, db: Session, settings: Settings, celery: Celery, run_id: str) -> RLRun:
    """Continue a cancelled, failed or stalled run from its last completed evaluation (409 if it succeeded)."""
    run = get_run(db=db, run_id=run_id)
    if run.status == SUCCEEDED:
        raise APIError(409, f"rl run {run_id!r} has finished", code="rl_run_finished")
    if run.status != RUNNING:
        run.status, run.stage, run.error, run.finished_at = QUEUED, "queued", None, None
    run.attempts = (run.attempts or 0) + 1
    db.commit()
    _send_step(celery=celery, settings=settings, run=run)
    return run
