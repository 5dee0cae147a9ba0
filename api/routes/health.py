"""Liveness (/healthz) and readiness (/readyz: database, broker, a live worker, and the vLLM server if used)."""

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
    since = utcnow() - timedelta(seconds=3 * settings.worker_heartbeat_s)
    with request.app.state.sessionmaker() as s:
        n = s.scalar(select(func.count()).select_from(WorkerHeartbeat)
                     .where(WorkerHeartbeat.last_seen >= since, WorkerHeartbeat.queue == settings.task_queue))
    if not n:
        return {"ok": False, "error": f"no worker has reported on queue {settings.task_queue!r} "
                                      f"in the last {3 * settings.worker_heartbeat_s:g} s"}
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


@router.get("/readyz", summary="Database, broker and a worker are reachable (503 with details if not)")
async def readyz(request: Request) -> JSONResponse:
    db, broker = await asyncio.gather(_run(_check_db, request), _run(_check_broker, request))
    worker = await _run(_check_worker, request) if db["ok"] else {"ok": False, "error": "database unavailable"}
    checks = {"database": db, "broker": broker, "worker": worker}
    backend = request.app.state.backend
    if backend.name != "local":  # a remote generation server (vLLM) must answer too
        try:
            checks["generation"] = await asyncio.wait_for(backend.check(), 10.0)
        except Exception as e:  # noqa: BLE001
            checks["generation"] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ready" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
