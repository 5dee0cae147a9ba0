"""Liveness (/healthz) and readiness (/readyz).

Ready means a request of any kind is served without waiting for a model to load:

- database and broker answer;
- a worker on ``task_queue`` has a heartbeat within ``worker_lost_after_s``. Workers write
  heartbeats only once they have the model and the retention gate's base side (when they
  preload them, the default), so a worker still loading does not count. This is the same in
  the embedded mode (``seal serve``: its local worker is a subprocess) and with Postgres/Redis
  (any worker of any host on the queue);
- generation: with the local backend and ``api_preload_model``, this process has loaded the
  base model; with vLLM, the server answers.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text

from seal_service.db.base import utcnow
from seal_service.db.models import WorkerHeartbeat

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict:
    return {"status": "ok"}


def _check_db(request: Request) -> dict:
    with request.app.state.sessionmaker() as s:
        s.execute(text("SELECT 1"))
    return {"ok": True}


def _check_worker(request: Request) -> dict:
    settings = request.app.state.settings
    window = settings.resolved_worker_lost_after_s
    since = utcnow() - timedelta(seconds=window)
    with request.app.state.sessionmaker() as s:
        n = s.scalar(select(func.count()).select_from(WorkerHeartbeat)
                     .where(WorkerHeartbeat.last_seen >= since, WorkerHeartbeat.queue == settings.task_queue))
    if not n:
        return {"ok": False, "error": f"no worker has reported on queue {settings.task_queue!r} "
                                      f"in the last {window:g} s (a starting worker reports once its model "
                                      "is loaded)"}
    return {"ok": True, "workers": n}


def _check_broker(request: Request) -> dict:
    from seal_service.queue import check_broker

    check_broker(request.app.state.celery)
    return {"ok": True, "embedded": request.app.state.settings.embedded_broker}


async def _run(fn, request: Request, timeout: float = 5.0) -> dict:  # noqa: ANN001
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, request), timeout)
    except TimeoutError:
        return {"ok": False, "error": f"no answer within {timeout:g} s"}
    except Exception as e:  # a failed check is reported, not raised
        return {"ok": False, "error": " ".join(f"{type(e).__name__}: {e}".split())[:500]}


async def _check_generation(request: Request) -> dict | None:
    backend = request.app.state.backend
    if backend.name == "local":
        if not request.app.state.settings.api_preload_model:
            return None  # loaded at the first completion, by choice
        check = await backend.check()
        if not check.get("model_loaded"):
            return {**check, "ok": False, "error": "the base model is not loaded yet in the API process (it loads "
                                                   "in the background from startup; if this lasts, see the API log)"}
        return check
    try:  # a remote generation server (vLLM) must answer too
        return await asyncio.wait_for(backend.check(), 10.0)
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}


@router.get("/readyz", summary="Database, broker, a worker with its model loaded and the generation backend "
                               "are ready (503 with details if not)")
async def readyz(request: Request) -> JSONResponse:
    db, broker = await asyncio.gather(_run(_check_db, request), _run(_check_broker, request))
    worker = await _run(_check_worker, request) if db["ok"] else {"ok": False, "error": "database unavailable"}
    checks = {"database": db, "broker": broker, "worker": worker}
    generation = await _check_generation(request)
    if generation is not None:
        checks["generation"] = generation
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ready" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
