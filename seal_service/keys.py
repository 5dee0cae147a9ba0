"""API keys: random tokens shown once, stored as SHA-256, each belonging to a tenant."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from seal_engine.errors import InputError
from seal_service.db.base import new_id
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
    if not key or len(key) > 256:
        return None
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked_at is not None:
        return None
    return row
