"""Tenants, their keys and the workers, as the admin endpoints report them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import field_error
from api.schemas import KeyCreate, KeyOut, TenantOut, WorkerOut
from seal_engine.errors import InputError
from seal_service.db.models import ApiKey, Tenant, WorkerHeartbeat
from seal_service.keys import create_key


def list_tenants(*, db: Session) -> list[TenantOut]:
    """Every tenant with its number of unrevoked keys."""
    counts = dict(db.execute(select(ApiKey.tenant_id, func.count()).where(ApiKey.revoked_at.is_(None))
                             .group_by(ApiKey.tenant_id)).all())
    return [TenantOut(id=t.id, created_at=t.created_at, keys=counts.get(t.id, 0))
            for t in db.scalars(select(Tenant).order_by(Tenant.id))]


def new_key(*, db: Session, body: KeyCreate) -> KeyOut:
    """A new key (its tenant created if needed), committed; 422 on ``tenant`` for a bad name."""
    try:
        k = create_key(db, body.tenant, admin=body.admin, name=body.name)
    except InputError as e:
        raise field_error(("tenant",), str(e)) from None
    db.commit()
    return KeyOut(id=k.id, tenant=k.tenant_id, admin=k.is_admin, key=k.key)


def list_workers(*, db: Session) -> list[WorkerOut]:
    """Workers by their last heartbeat, latest first."""
    rows = db.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.last_seen.desc())).all()
    return [WorkerOut(id=w.id, hostname=w.hostname, pid=w.pid, queue=w.queue, base_model=w.base_model,
                      started_at=w.started_at, last_seen=w.last_seen) for w in rows]
