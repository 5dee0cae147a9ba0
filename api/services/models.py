"""Models and adapters as the API lists them: the base model, the tenant's ready adapters
(their files, a zip of them), deleting one."""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import APIError, not_found
from api.schemas import AdapterOut, ModelOut, valid_id
from seal_service.db.base import utcnow
from seal_service.aliases import aliases_of, get_alias
from seal_service.db.models import ADAPTER_DELETED, ADAPTER_READY, Adapter, Alias
from seal_service.settings import Settings

if TYPE_CHECKING:
    from api.backends.runtime_loras import RuntimeLora

# The server's start time stands for the base model's "created".
_STARTED = int(utcnow().timestamp())


def adapter_files(path: str | Path) -> list[str]:
    """The files a tenant may download: regular files of the adapter's own directory (never a
    symbolic link, which could point anywhere on the machine; never hidden files)."""
    p = Path(path)
    if not p.is_dir():
        return []
    return sorted(f.name for f in p.iterdir() if f.is_file() and not f.is_symlink() and not f.name.startswith("."))


def base_model_out(settings: Settings) -> ModelOut:
    return ModelOut(id=settings.model_id, created=_STARTED, owned_by="seal", kind="base")


def adapter_model_out(a: Adapter) -> ModelOut:
    return ModelOut(id=a.id, created=int(a.created_at.timestamp()), owned_by=a.tenant_id, kind="adapter",
                    base_model=a.base_model, name=a.name, parent_id=a.parent_id, lineage=a.lineage)


def alias_model_out(alias: Alias, a: Adapter) -> ModelOut:
    return ModelOut(id=alias.name, created=int(alias.updated_at.timestamp()), owned_by=alias.tenant_id, kind="alias",
                    base_model=a.base_model, name=a.name, adapter_id=a.id, parent_id=a.parent_id, lineage=a.lineage)


def adapter_out(a: Adapter, db: Session | None = None) -> AdapterOut:
    """The adapter as the API shows it; with ``db``, the aliases that point at it too."""
    return AdapterOut(
        id=a.id, name=a.name, base_model=a.base_model, status=a.status, strategy=a.strategy, policy_id=a.policy_id,
        job_id=a.job_id, metrics=a.metrics, lora=a.lora, size_bytes=a.size_bytes,
        files=adapter_files(a.storage_path), created_at=a.created_at, parent_id=a.parent_id, lineage=a.lineage,
        aliases=[x.name for x in aliases_of(db, a.tenant_id, a.id)] if db is not None else [],
    )


def find_adapter(*, db: Session, tenant_id: str, adapter_id: str, param: str | None = None) -> Adapter:
    """A ready adapter of this tenant, else 404 (another tenant's id is just as unknown)."""
    row = db.get(Adapter, adapter_id) if valid_id(adapter_id) else None
    if row is None or row.tenant_id != tenant_id or row.status != ADAPTER_READY:
        raise not_found("adapter", adapter_id, param)
    return row


def resolve_adapter(*, db: Session, tenant_id: str, name: str, param: str | None = None) -> Adapter:
    """The tenant's ready adapter that ``name`` (an adapter id or an alias) names, else 404."""
    alias = get_alias(db, tenant_id, name)
    return find_adapter(db=db, tenant_id=tenant_id, adapter_id=alias.adapter_id if alias else name, param=param)


def served_adapter(*, db: Session, tenant_id: str, model_id: str, base_model: str) -> tuple[str, str]:
    """(id, directory) of the adapter a completion request names (an id or an alias); 404 (``param``
    "model") unless it is one of the tenant's ready adapters trained for ``base_model``."""
    try:
        row = resolve_adapter(db=db, tenant_id=tenant_id, name=model_id, param="model")
    except APIError:
        raise APIError(404, f"The model {model_id!r} does not exist or you do not have access to it.",
                       code="model_not_found", param="model") from None
    if row.base_model != base_model:
        raise APIError(404, f"adapter {model_id!r} was trained for {row.base_model!r}, "
                            f"which this server does not serve", code="model_not_found", param="model")
    return row.id, row.storage_path


def list_models(*, db: Session, settings: Settings, tenant_id: str,
                runtime_loras: Iterable[RuntimeLora] = ()) -> list[ModelOut]:
    """The base model, the tenant's ready adapters of it (oldest first), then ``runtime_loras``."""
    rows = db.scalars(
        select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.status == ADAPTER_READY,
                              Adapter.base_model == settings.model_id).order_by(Adapter.created_at)
    ).all()
    by_id = {a.id: a for a in rows}
    aliases = [alias_model_out(x, by_id[x.adapter_id]) for x in aliases_of(db, tenant_id) if x.adapter_id in by_id]
    return [base_model_out(settings), *(adapter_model_out(a) for a in rows), *aliases,
            *(ModelOut(id=r.name, created=r.created, owned_by=tenant_id, kind="lora",
                       base_model=settings.model_id) for r in runtime_loras)]


def retrieve_model(*, db: Session, settings: Settings, tenant_id: str, model_id: str) -> ModelOut:
    """The base model or one of the tenant's ready adapters, else 404 naming the model."""
    if model_id == settings.model_id:
        return base_model_out(settings)
    try:
        alias = get_alias(db, tenant_id, model_id)
        row = find_adapter(db=db, tenant_id=tenant_id, adapter_id=alias.adapter_id if alias else model_id)
        return alias_model_out(alias, row) if alias else adapter_model_out(row)
    except APIError:
        raise not_found("model", model_id) from None


def list_adapters(*, db: Session, tenant_id: str) -> list[Adapter]:
    """The tenant's ready adapters, newest first."""
    return list(db.scalars(select(Adapter).where(Adapter.tenant_id == tenant_id, Adapter.status == ADAPTER_READY)
                           .order_by(Adapter.created_at.desc())))


def mark_adapter_deleted(*, db: Session, tenant_id: str, adapter_id: str) -> Path:
    """Mark the tenant's adapter deleted and commit; returns its directory (still on disk). 409 while an
    alias points at it. Its children keep working: each version carries its own weights and lineage."""
    row = find_adapter(db=db, tenant_id=tenant_id, adapter_id=adapter_id)
    names = [a.name for a in aliases_of(db, tenant_id, adapter_id)]
    if names:
        raise APIError(409, f"alias(es) {', '.join(names)} point at adapter {adapter_id}; move them "
                            "(PUT /v1/aliases/{name}) or delete them first", code="adapter_in_use")
    path = Path(row.storage_path)
    row.status, row.deleted_at = ADAPTER_DELETED, utcnow()
    db.commit()
    return path


def remove_adapter_files(path: Path) -> None:
    # Move aside first so no reader sees a half-deleted directory.
    if path.is_dir():
        trash = path.with_name(f".{path.name}.deleted-{uuid.uuid4().hex[:8]}")
        try:
            path.rename(trash)
        except OSError:
            trash = path
        shutil.rmtree(trash, ignore_errors=True)


def adapter_file(*, db: Session, tenant_id: str, adapter_id: str, filename: str) -> Path:
    """One file of the tenant's adapter, else 404 (only listed files: no path escapes)."""
    row = find_adapter(db=db, tenant_id=tenant_id, adapter_id=adapter_id)
    if filename not in adapter_files(row.storage_path):
        raise not_found("file", filename)
    return Path(row.storage_path) / filename


def adapter_zip(*, db: Session, tenant_id: str, adapter_id: str) -> bytes:
    """The adapter directory as an uncompressed zip, files under ``{adapter_id}/``."""
    row = find_adapter(db=db, tenant_id=tenant_id, adapter_id=adapter_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in adapter_files(row.storage_path):
            zf.write(Path(row.storage_path) / name, arcname=f"{adapter_id}/{name}")
    return buf.getvalue()
