"""API keys: random tokens shown once, stored as SHA-256, each belonging to a tenant.

A key is found by the SHA-256 of what the caller sent (a unique index), then that hash is
compared again in constant time: what the lookup's timing could reveal is about a hash the
caller cannot steer, never about a prefix of a real key. Revocation stamps ``revoked_at``; every
request looks its key up again, so a revoked key is refused from the next request on.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from seal_engine.errors import InputError
from seal_service.db.base import new_id, utcnow
from seal_service.db.models import ApiKey, Tenant

KEY_PREFIX = "seal-"
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TenantNameError(InputError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def validate_tenant(name: str) -> str:
    if not isinstance(name, str) or not TENANT_RE.match(name):
        raise TenantNameError(
            "tenant must be 1-64 characters: letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return name


@dataclass(frozen=True)
class NewKey:
    id: str
    tenant_id: str
    is_admin: bool
    key: str  # the only time the plain key exists


def create_key(session: Session, tenant: str, *, admin: bool = False, name: str | None = None) -> NewKey:
    """Create ``tenant`` if needed and a new key for it. The caller commits."""
    validate_tenant(tenant)
    if session.get(Tenant, tenant) is None:
        session.add(Tenant(id=tenant))
        session.flush()
    key = generate_key()
    row = ApiKey(
        id=new_id("key"), tenant_id=tenant, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 4],
        is_admin=admin, name=name,
    )
    session.add(row)
    session.flush()
    return NewKey(row.id, tenant, admin, key)


def lookup_key(session: Session, key: str) -> ApiKey | None:
    """The unrevoked key row whose hash matches ``key``, else None."""
    if not key or len(key) > 256:
        return None
    digest = hash_key(key)
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
        return None
    return row


def list_keys(session: Session, tenant: str | None = None, *, include_revoked: bool = False) -> Sequence[ApiKey]:
    """Keys (of ``tenant``, or all), oldest first."""
    q = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if tenant is not None:
        q = q.where(ApiKey.tenant_id == tenant)
    if not include_revoked:
        q = q.where(ApiKey.revoked_at.is_(None))
    return session.scalars(q).all()


def revoke_key(session: Session, key_id: str) -> ApiKey | None:
    """Revoke key ``key_id`` (None if there is no such key). Revoking twice keeps the first time.
    The caller commits."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row
