"""Admin endpoints (admin keys only; 403 for others). A small start: tenants, keys, workers, jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from ..db.models import AdaptationJob, ApiKey, Tenant, WorkerHeartbeat
from ..deps import AdminDep, DbDep
from ..errors import field_error
from ..jobs import job_out
from ..keys import TenantNameError, create_key
from ..schemas import AdaptationList, KeyCreate, KeyOut, TenantOut, WorkerOut

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
