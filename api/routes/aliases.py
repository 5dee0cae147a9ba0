"""Aliases: a stable model name (``model: "kb-support"``) for whichever version it points at;
moving it (rollback included) is one PUT."""

from __future__ import annotations

from fastapi import APIRouter, Path

from api.deps import DbDep, PrincipalDep, SettingsDep
from api.schemas import AliasIn, AliasList, AliasOut
from api.services import aliases
from seal_service.aliases import ALIAS_PATTERN

router = APIRouter(prefix="/v1/aliases", tags=["aliases"])

AliasName = Path(min_length=1, max_length=64, pattern=ALIAS_PATTERN, description="the alias")


@router.put("/{name}", response_model=AliasOut,
            summary="Point an alias at one of this tenant's adapters (created if new, moved if not)")
def put_alias(body: AliasIn, db: DbDep, who: PrincipalDep, settings: SettingsDep,
              name: str = AliasName) -> AliasOut:
    return aliases.alias_out(aliases.put_alias(db=db, settings=settings, tenant_id=who.tenant_id, name=name,
                                               adapter_id=body.adapter_id))


@router.get("", response_model=AliasList, summary="This tenant's aliases, by name")
def list_aliases(db: DbDep, who: PrincipalDep) -> AliasList:
    return AliasList(data=[aliases.alias_out(a) for a in aliases.list_aliases(db=db, tenant_id=who.tenant_id)])


@router.get("/{name}", response_model=AliasOut, summary="One alias")
def get_alias(db: DbDep, who: PrincipalDep, name: str = AliasName) -> AliasOut:
    return aliases.alias_out(aliases.find_alias(db=db, tenant_id=who.tenant_id, name=name))


@router.delete("/{name}", summary="Delete an alias (the adapter it points at stays)")
def delete_alias(db: DbDep, who: PrincipalDep, name: str = AliasName) -> dict:
    aliases.delete_alias(db=db, tenant_id=who.tenant_id, name=name)
    return {"id": name, "object": "alias", "deleted": True}
