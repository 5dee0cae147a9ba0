"""Celery tasks and worker signals. Imported by the worker only (``include`` in workers.app)."""

from __future__ import annotations

import logging

from celery.signals import worker_ready, worker_shutdown

# The engine is imported here, in the main thread, before any task or thread runs:
# transformers' lazy imports are not safe to race from two threads.
import seal_engine.knowledge.adapt  # noqa: F401
import seal_engine.core.model  # noqa: F401

from seal_service.queue import ADAPT_TASK, RL_EVALUATE_TASK, RL_STEP_TASK, dispatch_rl
from workers.adaptation.run import run_adaptation
from workers.app import app
from workers.identity import worker_identity
from workers.lifecycle import Housekeeper, preload_model
from workers.rl import jobs as rl_jobs

log = logging.getLogger("seal.worker")

_housekeeper: Housekeeper | None = None


def _settings():  # noqa: ANN202
    return app.conf.seal_settings


@app.task(name=ADAPT_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def adapt_task(self, job_id: str) -> str:  # noqa: ANN001
    """Run adaptation job ``job_id`` (idempotent: any number of deliveries, one adapter)."""
    return run_adaptation(_settings(), job_id, worker=worker_identity())


def _dispatch(kind: str, args: list) -> None:
    dispatch_rl(app, _settings(), kind, args)


@app.task(name=RL_STEP_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def rl_step_task(self, run_id: str) -> str:  # noqa: ANN001
    """Advance RL run ``run_id`` (idempotent: sends only the evaluations still missing)."""
    return rl_jobs.step(_settings(), run_id, _dispatch, worker=worker_identity())


@app.task(name=RL_EVALUATE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def rl_evaluate_task(self, run_id: str, iteration: int, passage: int) -> str:  # noqa: ANN001
    """Evaluate one passage of an RL iteration (a stored evaluation is never recomputed)."""
    return rl_jobs.evaluate(_settings(), run_id, iteration, passage, _dispatch, worker=worker_identity())


@worker_ready.connect
def _on_ready(sender=None, **_kw) -> None:  # noqa: ANN001
    global _housekeeper
    settings = _settings()
    settings.ensure_dirs()
    _housekeeper = Housekeeper(settings, app, worker_identity())
    _housekeeper.start()
    if settings.worker_preload_model:
        # Before the first task is taken: the model then stays loaded between tasks.
        preload_model(settings)
    log.info("seal worker %s ready on queue %s (%s)", worker_identity(), settings.task_queue,
             "embedded broker" if settings.embedded_broker else "external broker")


@worker_shutdown.connect
def _on_shutdown(sender=None, **_kw) -> None:  # noqa: ANN001
    if _housekeeper is not None:
        _housekeeper.stop()
