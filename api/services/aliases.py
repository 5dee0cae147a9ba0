"""Aliases on the API side: point a name at one of the tenant's adapters, list, read, delete."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import APIError, field_error, not_found
from api.schemas import AliasOut
from api.services.models import find_adapter
from seal_service.aliases import ALIAS_PATTERN, aliases_of, get_alias, move_alias, valid_alias
from seal_service.db.models import Alias
from seal_service.settings import Settings


def alias_out(a: Alias) -> AliasOut:
    return AliasOut(name=a.name, adapter_id=a.adapter_id, created_at=a.created_at, updated_at=a.updated_at)


def alias_name_problem(name: str, settings: Settings) -> str | None:
    """Why ``name`` cannot be an alias (not the pattern, or a model id already), else None."""
    if not valid_alias(name):
        return f"an alias matches {ALIAS_PATTERN} (a letter, then letters, digits, '.' or '-')"
    if name == settings.model_id:
        return f"{name!r} is the base model's id"
    return None


def put_alias(*, db: Session, settings: Settings, tenant_id: str, name: str, adapter_id: str) -> Alias:
    """Point ``name`` at the tenant's ready adapter ``adapter_id`` (404 otherwise) and commit."""
    if (problem := alias_name_problem(name, settings)) is not None:
        raise APIError(422, problem, code="invalid_value", param="name")
    row = find_adapter(db=db, tenant_id=tenant_id, adapter_id=adapter_id, param="adapter_id")
    if row.base_model != settings.model_id:
        raise field_error(("adapter_id",), f"adapter {adapter_id!r} was trained for {row.base_model!r}, "
                                                  f"which this server does not serve")
    alias = move_alias(db, tenant_id, name, row.id)
    db.commit()
    db.refresh(alias)
    return alias


def find_alias(*, db: Session, tenant_id: str, name: str) -> Alias:
    row = get_alias(db, tenant_id, name)
    if row is None:
        raise not_found("alias", name)
    return row


def list_aliases(*, db: Session, tenant_id: str) -> list[Alias]:
    return aliases_of(db, tenant_id)


def delete_alias(*, db: Session, tenant_id: str, name: str) -> None:
    db.delete(find_alias(db=db, tenant_id=tenant_id, name=name))
    db.commit()

