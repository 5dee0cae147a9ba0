"""Aliases: a tenant's names for its adapters, shared by the API (routes, model lookup) and the
worker (a job that names an alias moves it to the version it registers, in the same transaction)."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from seal_service.db.base import utcnow
from seal_service.db.models import Alias

# Not an id (those start with a prefix and "_"), so a model name is never both; no "/" or ":" that
# clients treat specially.
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9.-]{0,63}$"
_ALIAS = re.compile(ALIAS_PATTERN)


def valid_alias(name: str) -> bool:
    return bool(_ALIAS.fullmatch(name))


def get_alias(s: Session, tenant_id: str, name: str) -> Alias | None:
    return s.get(Alias, (tenant_id, name)) if valid_alias(name) else None


def move_alias(s: Session, tenant_id: str, name: str, adapter_id: str) -> Alias:
    """Point ``name`` at ``adapter_id`` (creating it); the caller commits."""
    row = s.get(Alias, (tenant_id, name))
    if row is None:
        row = Alias(tenant_id=tenant_id, name=name, adapter_id=adapter_id)
        s.add(row)
    else:
        row.adapter_id, row.updated_at = adapter_id, utcnow()
    return row


def aliases_of(s: Session, tenant_id: str, adapter_id: str | None = None) -> list[Alias]:
    """The tenant's aliases by name; only those pointing at ``adapter_id`` when given."""
    q = select(Alias).where(Alias.tenant_id == tenant_id)
    if adapter_id is not None:
        q = q.where(Alias.adapter_id == adapter_id)
    return list(s.scalars(q.order_by(Alias.name)))
