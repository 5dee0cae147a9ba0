"""Tenants, their keys and the workers, as the admin endpoints report them.

Admin keys are service-wide (the operator's), not per tenant: like creating keys for any tenant,
an admin may list and revoke any tenant's keys, admin keys included, except the key it is using
(409: revoking it would lock the caller out mid-request; use another admin key or the CLI).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from api.errors import APIError, field_error, not_found
from api.schemas import KeyCreate, KeyOut, TenantOut, WorkerOut
from api.schemas.admin import KeyInfo, KeyList
from seal_engine.errors import InputError
from seal_service.db.base import utcnow
from seal_service.db.models import ApiKey, Tenant, WorkerHeartbeat
from seal_service.keys import create_key, list_keys, revoke_key
from seal_service.settings import Settings


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


def key_info(k: ApiKey) -> KeyInfo:
    return KeyInfo(id=k.id, tenant=k.tenant_id, admin=k.is_admin, name=k.name, prefix=k.prefix,
                   created_at=k.created_at, revoked_at=k.revoked_at)


def keys(*, db: Session, tenant: str | None, include_revoked: bool) -> KeyList:
    return KeyList(data=[key_info(k) for k in list_keys(db, tenant, include_revoked=include_revoked)])


def revoke(*, db: Session, key_id: str, caller_key_id: str) -> KeyInfo:
    """Revoke ``key_id`` (404 if unknown, 409 for the caller's own key); committed. Idempotent."""
    if key_id == caller_key_id:
        raise APIError(409, "an admin key cannot revoke itself; use another admin key or `seal keys revoke`",
                       code="cannot_revoke_own_key", param="key_id")
    row = revoke_key(db, key_id)
    if row is None:
        raise not_found("key", key_id, "key_id")
    db.commit()
    return key_info(row)


def list_workers(*, db: Session, settings: Settings) -> list[WorkerOut]:
    """Workers by their last heartbeat, latest first: ``alive`` or ``lost`` (no heartbeat within
    ``worker_lost_after_s``); rows lost for over ``worker_prune_after_s`` are deleted here too, so
    they go even when no worker is left to prune them."""
    now = utcnow()
    res = db.execute(delete(WorkerHeartbeat)
                     .where(WorkerHeartbeat.last_seen < now - timedelta(seconds=settings.worker_prune_after_s))
                     .execution_options(synchronize_session=False))
    if res.rowcount:
        db.commit()
    lost_before = now - timedelta(seconds=settings.resolved_worker_lost_after_s)
    rows = db.scalars(select(WorkerHeartbeat).order_by(WorkerHeartbeat.last_seen.desc())).all()
    return [WorkerOut(id=w.id, hostname=w.hostname, pid=w.pid, queue=w.queue, base_model=w.base_model,
                      started_at=w.started_at, last_seen=w.last_seen,
                      status="alive" if w.last_seen >= lost_before else "lost") for w in rows]
