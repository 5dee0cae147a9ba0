"""Models (OpenAI list format: the base model and this tenant's ready adapters) and adapters."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from api.backends import ModelTarget
from api.deps import DbDep, PrincipalDep, SettingsDep
from api.schemas import AdapterList, AdapterOut, ModelList, ModelOut
from api.services import models

router = APIRouter(tags=["models"])


@router.get("/v1/models", response_model=ModelList, summary="Base model and this tenant's ready adapters")
def list_models(request: Request, db: DbDep, who: PrincipalDep, settings: SettingsDep) -> ModelList:
    runtime = request.app.state.runtime_loras.of_tenant(who.tenant_id) if who.is_admin else []
    return ModelList(data=models.list_models(db=db, settings=settings, tenant_id=who.tenant_id,
                                             runtime_loras=runtime))


@router.get("/v1/models/{model_id}", response_model=ModelOut, summary="One model (base or adapter)")
def retrieve_model(model_id: str, db: DbDep, who: PrincipalDep, settings: SettingsDep) -> ModelOut:
    return models.retrieve_model(db=db, settings=settings, tenant_id=who.tenant_id, model_id=model_id)


@router.get("/v1/adapters", response_model=AdapterList, tags=["adapters"], summary="This tenant's ready adapters")
def list_adapters(db: DbDep, who: PrincipalDep) -> AdapterList:
    return AdapterList(data=[models.adapter_out(a, db) for a in models.list_adapters(db=db, tenant_id=who.tenant_id)])


@router.get("/v1/adapters/{adapter_id}", response_model=AdapterOut, tags=["adapters"],
            summary="One adapter: metrics, parent, lineage (documents learned, the chain's accuracy matrix), aliases")
def get_adapter(adapter_id: str, db: DbDep, who: PrincipalDep) -> AdapterOut:
    return models.adapter_out(models.find_adapter(db=db, tenant_id=who.tenant_id, adapter_id=adapter_id), db)


@router.delete("/v1/adapters/{adapter_id}", tags=["adapters"], summary="Delete an adapter and its files")
async def delete_adapter(adapter_id: str, request: Request, who: PrincipalDep) -> dict:
    factory = request.app.state.sessionmaker

    def run() -> Path:
        with factory() as db:
            path = models.mark_adapter_deleted(db=db, tenant_id=who.tenant_id, adapter_id=adapter_id)
        request.app.state.inference.evict(path)
        models.remove_adapter_files(path)
        return path

    path = await asyncio.to_thread(run)
    await request.app.state.backend.forget_adapter(ModelTarget(adapter_id, adapter=adapter_id, path=path))
    return {"id": adapter_id, "object": "adapter", "deleted": True}


@router.get("/v1/adapters/{adapter_id}/files/{filename}", tags=["adapters"],
            summary="One file of the adapter (PEFT: adapter_config.json, adapter_model.safetensors)")
def download_file(adapter_id: str, filename: str, db: DbDep, who: PrincipalDep) -> FileResponse:
    path = models.adapter_file(db=db, tenant_id=who.tenant_id, adapter_id=adapter_id, filename=filename)
    media = "application/json" if filename.endswith(".json") else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=filename)


@router.get("/v1/adapters/{adapter_id}/download", tags=["adapters"],
            summary="The adapter directory as a zip (load it with peft.PeftModel.from_pretrained)")
def download_zip(adapter_id: str, db: DbDep, who: PrincipalDep) -> Response:
    data = models.adapter_zip(db=db, tenant_id=who.tenant_id, adapter_id=adapter_id)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{adapter_id}.zip"'})
