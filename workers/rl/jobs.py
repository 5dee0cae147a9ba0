"""RL runs on workers: the ReST-EM loop of seal_engine.rl.loop as idempotent, resumable tasks.

State lives in the database, so any task can be delivered any number of times:

- ``rl_runs.metrics["iteration"]``: the iteration in progress.
- ``rl_samples``: the N self-edits of each passage of that iteration (written once,
  when the iteration is sampled), later filled with their reward terms.
- ``rl_evaluations``: one row per evaluated passage (written in the same transaction
  as its samples' rewards): a passage with a row is never evaluated again.
- ``policy_checkpoints``: one row per finished iteration (id derived from run and
  iteration); its files are written to a temporary directory and renamed into place.

``step`` advances the run: sample the iteration if needed, fan out one ``evaluate``
task per passage still missing, and, once all are in, fine-tune the policy and start
the next iteration. Every ``evaluate`` that completes the set sends ``step`` again
(the chord, without a result backend). Each unit of work (an evaluation, or the
step's sampling and fine-tuning) is held under a lease (``workers.rl.leases``), so a
duplicate delivery never redoes work in progress. A killed worker loses at most the
evaluation it was running: the workers' recovery sweep notices the dead lease and
sends ``step``, as does ``resume``, and step resends only what is missing.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from seal_service.db.base import utcnow
from seal_service.db.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    PolicyCheckpoint,
    RLEvaluation,
    RLRun,
    RLSample,
)
from seal_service.db.session import session_scope
from seal_service.queue import STEP, mark_dispatched
from seal_service.settings import Settings
from seal_service.storage import fsync_dir, policy_dir
from workers.engine import load_model
from workers.errors import readable
from workers.identity import worker_identity
from workers.rl import leases

log = logging.getLogger("seal.worker.rl")

# dispatch(kind, args): kind is "step" or "evaluate".
Dispatch = Callable[[str, list[Any]], None]
BundleFn = Callable[[Settings], Any]


def checkpoint_id(run_id: str, iteration: int) -> str:
    return f"pol_{run_id.split('_', 1)[-1]}_{iteration + 1}"


def load_pool(config: dict[str, Any]):  # noqa: ANN201
    """The run's passages, or its few-shot tasks for a task run."""
    from seal_engine.knowledge.documents import document_from_dict, load_documents

    kind = config.get("rl", {}).get("task", "knowledge")
    if kind != "knowledge":
        from seal_engine.fewshot.datasets import load_task_dataset, task_from_json

        if config.get("tasks_data"):
            return [task_from_json(d) for d in config["tasks_data"]]
        return load_task_dataset(kind, config["dataset"], config.get("solutions"))
    if config.get("passages_data"):
        return [document_from_dict(d, f"passages[{i}]") for i, d in enumerate(config["passages_data"])]
    return load_documents(config["dataset"])


def _run(settings: Settings, run_id: str) -> RLRun | None:
    with session_scope(settings.resolved_database_url) as s:
        run = s.get(RLRun, run_id)
        if run is not None:
            s.expunge(run)
        return run


def _set(settings: Settings, run_id: str, **values: Any) -> None:
    with session_scope(settings.resolved_database_url) as s:
        s.execute(update(RLRun).where(RLRun.id == run_id, RLRun.status.notin_(tuple(TERMINAL)))
                  .values(**values).execution_options(synchronize_session=False))


def _current_policy(settings: Settings, run: RLRun, iteration: int):  # noqa: ANN202
    """(policy id, adapter) that writes iteration ``iteration``'s self-edits."""
    from seal_engine.core.lora import load_adapter

    pid = checkpoint_id(run.id, iteration - 1) if iteration > 0 else run.config.get("init_policy_id")
    if not pid:
        return None, None
    with session_scope(settings.resolved_database_url) as s:
        row = s.get(PolicyCheckpoint, pid)
        path = row.storage_path if row else None
    if not path:
        return None, None
    return pid, load_adapter(path)


def _engine_config(run: RLRun):  # noqa: ANN202
    from seal_engine.rl.config import RLConfig

    return RLConfig.model_validate(run.config["rl"])


def step(settings: Settings, run_id: str, dispatch: Dispatch, *, worker: str = "", bundle_fn: BundleFn = load_model) -> str:
    """Advance the run as far as this process can; returns what it did."""
    run = _run(settings, run_id)
    if run is None or run.status in TERMINAL:
        return "skipped"
    worker = worker or worker_identity()
    iteration = int((run.metrics or {}).get("iteration", 0))
    if not leases.claim(settings, run_id, iteration, STEP, worker):
        return "busy"  # another live worker is sampling or fine-tuning this iteration
    try:
        with leases.Held(settings, run_id, iteration, STEP, worker):
            return _step(settings, run, dispatch, worker, bundle_fn)
    except Exception as e:  # noqa: BLE001
        log.exception("rl run %s failed", run_id)
        _set(settings, run_id, status=FAILED, stage="failed", error=readable(e), finished_at=utcnow())
        return "failed"


def _step(settings: Settings, run: RLRun, dispatch: Dispatch, worker: str, bundle_fn: BundleFn) -> str:
    from seal_engine.rl.loop import passages_for_iteration, sample_iteration

    config = _engine_config(run)
    metrics = dict(run.metrics or {})
    iteration = int(metrics.get("iteration", 0))
    if run.status == QUEUED:
        _set(settings, run.id, status=RUNNING, started_at=run.started_at or utcnow(), worker=worker)
    url = settings.resolved_database_url
    with session_scope(url) as s:
        have = s.scalars(select(RLSample.passage).where(RLSample.rl_run_id == run.id, RLSample.iteration == iteration)).all()
        done = set(s.scalars(select(RLEvaluation.passage).where(RLEvaluation.rl_run_id == run.id,
                                                                RLEvaluation.iteration == iteration)).all())
    pool = load_pool(run.config)
    docs = passages_for_iteration(pool, config, iteration)
    if not have:
        _set(settings, run.id, stage=f"sampling:{iteration}")
        bundle = bundle_fn(settings)
        pid, policy = _current_policy(settings, run, iteration)
        sampled = sample_iteration(bundle, docs, config, iteration, policy)
        try:
            with session_scope(url) as s:
                for p, (doc, (prompt, edits)) in enumerate(zip(docs, sampled)):
                    title = getattr(doc, "title", None) or getattr(doc, "name", "")  # a passage or a task
                    for n, text in enumerate(edits):
                        s.add(RLSample(rl_run_id=run.id, iteration=iteration, passage=p, sample=n, title=title,
                                       prompt=prompt, text=text, policy_id=pid))
        except IntegrityError:
            pass  # another delivery sampled first; its samples stand
    if len(done) < len(docs):
        _set(settings, run.id, stage=f"evaluating:{iteration}", progress=_progress(config, iteration, len(done), len(docs)))
        # Evaluations a live worker holds finish (and send step) on their own.
        held = leases.held_units(settings, run.id, iteration)
        missing = [p for p in range(len(docs)) if p not in done and p not in held]
        if not missing:
            return "waiting"
        mark_dispatched(settings, run.id, iteration, missing)
        for p in missing:
            dispatch("evaluate", [run.id, iteration, p])
        return "dispatched"
    return _finish_iteration(settings, run, config, iteration, docs, metrics, dispatch, bundle_fn)


def _progress(config, iteration: int, done: int, total: int) -> float:  # noqa: ANN001
    return round((iteration + 0.9 * done / max(total, 1)) / config.iterations, 4)


def _finish_iteration(settings, run, config, iteration, docs, metrics, dispatch, bundle_fn) -> str:  # noqa: ANN001
    from seal_engine.rl.loop import iteration_metrics, select_best, train_policy
    from seal_engine.rl.results import PassageResult

    url = settings.resolved_database_url
    cid = checkpoint_id(run.id, iteration)
    with session_scope(url) as s:
        results = [PassageResult.from_dict(e.result) for e in s.scalars(
            select(RLEvaluation).where(RLEvaluation.rl_run_id == run.id, RLEvaluation.iteration == iteration)
            .order_by(RLEvaluation.passage))]
        exists = s.get(PolicyCheckpoint, cid) is not None
    kept = select_best(results, config.keep_margin, successful_only=config.is_task)
    m = iteration_metrics(results, kept)
    m["iteration"] = iteration
    if not exists:
        _set(settings, run.id, stage=f"training_policy:{iteration}")
        bundle = bundle_fn(settings)
        _pid, policy = _current_policy(settings, run, iteration)
        new = train_policy(bundle, [(x.prompt, x.text) for x in kept], config, policy, iteration)
        if new is None and policy is None:
            path = None  # nothing kept and no earlier policy: the base model stays the writer
        else:
            final = policy_dir(settings, run.id, iteration)
            tmp = final.parent / f".tmp-{uuid.uuid4().hex[:8]}"
            (new or policy).save(tmp)
            (tmp / "seal_policy.json").write_text(json.dumps({"rl_run_id": run.id, "iteration": iteration + 1,
                                                              "metrics": m}, default=str))
            fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            path = str(final)
        if new is not None:
            m["sft_loss_first"], m["sft_loss_last"] = new.losses[0], new.losses[-1]
        try:
            with session_scope(url) as s:
                s.add(PolicyCheckpoint(id=cid, rl_run_id=run.id, base_model=run.base_model, strategy=run.strategy,
                                       iteration=iteration + 1, storage_path=path, metrics=m))
        except IntegrityError:
            pass
    history = [h for h in metrics.get("iterations", []) if h.get("iteration") != iteration] + [m]
    curve = {"mean_reward": [h["mean_reward"] for h in history],
             "best_of_n_reward": [h["mean_best_of_n_reward"] for h in history]}
    nxt = iteration + 1
    new_metrics = {**metrics, "iteration": nxt, "iterations": history, "curve": curve, "checkpoints":
                   sorted({*metrics.get("checkpoints", []), cid})}
    if nxt >= config.iterations:
        _set(settings, run.id, metrics={**new_metrics, "iteration": iteration}, status=SUCCEEDED, stage="done",
             progress=1.0, finished_at=utcnow())
        return "succeeded"
    _set(settings, run.id, metrics=new_metrics, progress=_progress(config, nxt, 0, 1))
    mark_dispatched(settings, run.id, nxt, [STEP])
    dispatch("step", [run.id])
    return "advanced"


def evaluate(settings: Settings, run_id: str, iteration: int, passage: int, dispatch: Dispatch, *,
             worker: str = "", bundle_fn: BundleFn = load_model) -> str:
    """Evaluate one passage's samples (idempotent); the evaluation completing the set sends ``step``."""
    run = _run(settings, run_id)
    if run is None or run.status in TERMINAL:
        return "skipped"
    url = settings.resolved_database_url
    with session_scope(url) as s:
        if s.get(RLEvaluation, (run_id, iteration, passage)) is not None:
            return "skipped"
        rows = s.scalars(select(RLSample).where(RLSample.rl_run_id == run_id, RLSample.iteration == iteration,
                                                RLSample.passage == passage).order_by(RLSample.sample)).all()
        prompt, edits = (rows[0].prompt if rows else ""), [r.text for r in rows]
    if not edits:
        return "skipped"  # not sampled yet: step will send it
    worker = worker or worker_identity()
    if not leases.claim(settings, run_id, iteration, passage, worker):
        return "leased"  # a live worker is evaluating it and will send step when done
    with leases.Held(settings, run_id, iteration, passage, worker):
        stored = _evaluate_and_store(settings, run, iteration, passage, prompt, edits, worker, bundle_fn)
    if stored != "evaluated":
        return stored
    with session_scope(url) as s:
        n_done = len(s.scalars(select(RLEvaluation.passage).where(RLEvaluation.rl_run_id == run_id,
                                                                  RLEvaluation.iteration == iteration)).all())
        n_all = len(set(s.scalars(select(RLSample.passage).where(RLSample.rl_run_id == run_id,
                                                                 RLSample.iteration == iteration)).all()))
    if n_done >= n_all:
        mark_dispatched(settings, run_id, iteration, [STEP])
        dispatch("step", [run_id])
    else:
        _set(settings, run_id, progress=_progress(_engine_config(run), iteration, n_done, n_all))
    return "evaluated"


def _evaluate_and_store(settings: Settings, run: RLRun, iteration: int, passage: int, prompt: str, edits: list[str],
                        worker: str, bundle_fn: BundleFn) -> str:
    from seal_engine.knowledge.documents import Document
    from seal_engine.rl.loop import evaluate_passage_samples, passages_for_iteration

    run_id, url = run.id, settings.resolved_database_url
    with session_scope(url) as s:
        if s.get(RLEvaluation, (run_id, iteration, passage)) is not None:
            return "skipped"  # stored by a worker that held the lease before us
    try:
        config = _engine_config(run)
        doc: Document = passages_for_iteration(load_pool(run.config), config, iteration)[passage]
        result = evaluate_passage_samples(bundle_fn(settings), doc, passage, prompt, edits, config, settings, iteration)
    except Exception as e:  # noqa: BLE001
        log.exception("rl run %s: evaluation of passage %s failed", run_id, passage)
        _set(settings, run_id, status=FAILED, stage="failed", error=readable(e), finished_at=utcnow())
        return "failed"
    try:
        with session_scope(url) as s:
            s.add(RLEvaluation(rl_run_id=run_id, iteration=iteration, passage=passage, worker=worker,
                               result=json.loads(json.dumps(result.to_dict(), default=str))))
            s.flush()
            for sr in result.samples:
                s.execute(update(RLSample).where(RLSample.rl_run_id == run_id, RLSample.iteration == iteration,
                                                 RLSample.passage == passage, RLSample.sample == sr.sample)
                          .values(seeds=sr.seeds, rewards=sr.rewards, reward=sr.reward)
                          .execution_options(synchronize_session=False))
    except IntegrityError:
        return "skipped"  # a duplicate delivery stored it first
    return "evaluated"


def cancel(settings: Settings, run_id: str) -> None:
    _set(settings, run_id, status=CANCELLED, stage="cancelled", finished_at=utcnow())
