"""Models (OpenAI list format: the base model and this tenant's ready adapters) and adapters."""

from __future__ import annotations

import asyncio
import io
import shutil
import uuid
import zipfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.backends import ModelTarget
from seal_service.db.base import utcnow
from seal_service.db.models import ADAPTER_DELETED, ADAPTER_READY, Adapter
from api.deps import DbDep, Principal, PrincipalDep, SettingsDep
from api.errors import APIError, not_found
from api.services.jobs import adapter_files, valid_id
from api.schemas import AdapterList, AdapterOut, ModelList, ModelOut
from seal_service.settings import Settings

router = APIRouter(tags=["models"])

# The server's start time stands for the base model's "created".
_STARTED = int(utcnow().timestamp())


def base_model_out(settings: Settings) -> ModelOut:
    return ModelOut(id=settings.model_id, created=_STARTED, owned_by="seal", kind="base")


def adapter_model_out(a: Adapter) -> ModelOut:
    return ModelOut(id=a.id, created=int(a.created_at.timestamp()), owned_by=a.tenant_id, kind="adapter",
                    base_model=a.base_model, name=a.name)


def adapter_out(a: Adapter) -> AdapterOut:
    return AdapterOut(
        id=a.id, name=a.name, base_model=a.base_model, status=a.status, strategy=a.strategy, policy_id=a.policy_id,
        job_id=a.job_id, metrics=a.metrics, lora=a.lora, size_bytes=a.size_bytes,
        files=adapter_files(a.storage_path), created_at=a.created_at,
    )


def find_adapter(db: Session, who: Principal, adapter_id: str, param: str | None = None) -> Adapter:
    """A ready adapter of this tenant, else 404 (another tenant's id is just as unknown)."""
    row = db.get(Adapter, adapter_id) if valid_id(adapter_id) else None
    if row is None or row.tenant_id != who.tenant_id or row.status != ADAPTER_READY:
        raise not_found("adapter", adapter_id, param)
    return row


@router.get("/v1/models", response_model=ModelList, summary="Base model and this tenant's ready adapters")
def list_models(request: Request, db: DbDep, who: PrincipalDep, settings: SettingsDep) -> ModelList:
    rows = db.scalars(
        select(Adapter).where(Adapter.tenant_id == who.tenant_id, Adapter.status == ADAPTER_READY,
                              Adapter.base_model == settings.model_id).order_by(Adapter.created_at)
    ).all()
    runtime = request.app.state.runtime_loras.of_tenant(who.tenant_id) if who.is_admin else []
    return ModelList(data=[base_model_out(settings), *(adapter_model_out(a) for a in rows),
                           *(ModelOut(id=r.name, created=r.created, owned_by=who.tenant_id, kind="lora",
                                      base_model=settings.model_id) for r in runtime)])


@router.get("/v1/models/{model_id}", response_model=ModelOut, summary="One model (base or adapter)")
def retrieve_model(model_id: str, db: DbDep, who: PrincipalDep, settings: SettingsDep) -> ModelOut:
    if model_id == settings.model_id:
        return base_model_out(settings)
    try:
        return adapter_model_out(find_adapter(db, who, model_id))
    except APIError:
        raise not_found("model", model_id) from None


@router.get("/v1/adapters", response_model=AdapterList, tags=["adapters"], summary="This tenant's ready adapters")
def list_adapters(db: DbDep, who: PrincipalDep) -> AdapterList:
    rows = db.scalars(select(Adapter).where(Adapter.tenant_id == who.tenant_id, Adapter.status == ADAPTER_READY)
                      .order_by(Adapter.created_at.desc())).all()
    return AdapterList(data=[adapter_out(a) for a in rows])


@router.get("/v1/adapters/{adapter_id}", response_model=AdapterOut, tags=["adapters"], summary="One adapter")
def get_adapter(adapter_id: str, db: DbDep, who: PrincipalDep) -> AdapterOut:
    return adapter_out(find_adapter(db, who, adapter_id))


@router.delete("/v1/adapters/{adapter_id}", tags=["adapters"], summary="Delete an adapter and its files")
async def delete_adapter(adapter_id: str, request: Request, who: PrincipalDep) -> dict:
    factory = request.app.state.sessionmaker

    def run() -> Path:
        with factory() as db:
            row = find_adapter(db, who, adapter_id)
            path = Path(row.storage_path)
            row.status, row.deleted_at = ADAPTER_DELETED, utcnow()
            db.commit()
        request.app.state.inference.evict(path)
        # Move aside first so no reader sees a half-deleted directory.
        if path.is_dir():
            trash = path.with_name(f".{path.name}.deleted-{uuid.uuid4().hex[:8]}")
            try:
                path.rename(trash)
            except OSError:
                trash = path
            shutil.rmtree(trash, ignore_errors=True)
        return path

    path = await asyncio.to_thread(run)
    await request.app.state.backend.forget_adapter(ModelTarget(adapter_id, adapter=adapter_id, path=path))
    return {"id": adapter_id, "object": "adapter", "deleted": True}


@router.get("/v1/adapters/{adapter_id}/files/{filename}", tags=["adapters"],
            summary="One file of the adapter (PEFT: adapter_config.json, adapter_model.safetensors)")
def download_file(adapter_id: str, filename: str, db: DbDep, who: PrincipalDep) -> FileResponse:
    row = find_adapter(db, who, adapter_id)
    if filename not in adapter_files(row.storage_path):
        raise not_found("file", filename)
    media = "application/json" if filename.endswith(".json") else "application/octet-stream"
    return FileResponse(Path(row.storage_path) / filename, media_type=media, filename=filename)


@router.get("/v1/adapters/{adapter_id}/download", tags=["adapters"],
            summary="The adapter directory as a zip (load it with peft.PeftModel.from_pretrained)")
def download_zip(adapter_id: str, db: DbDep, who: PrincipalDep) -> Response:
    row = find_adapter(db, who, adapter_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in adapter_files(row.storage_path):
            zf.write(Path(row.storage_path) / name, arcname=f"{adapter_id}/{name}")
    return Response(buf.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{adapter_id}.zip"'})
