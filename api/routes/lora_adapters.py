"""vLLM's runtime LoRA endpoints, so that a seal API can be driven exactly like a vLLM server.

``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` makes ``model=<lora_name>`` usable
in the completion endpoints by the admin keys of the caller's tenant; ``lora_path`` must be an
adapter directory under the adapter storage (absolute, or relative to it).
``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` forgets it. Both need an admin key and
answer like vLLM: ``Success: ...`` as text, 400 when the name is already loaded, 404 when an
unloaded name is unknown. Loaded names live in this process's memory, as in vLLM
(:mod:`api.backends.runtime_loras`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import Field

from api.backends.runtime_loras import load_runtime_lora, unload_runtime_lora
from api.deps import AdminDep, SettingsDep
from api.schemas import Strict

router = APIRouter(tags=["adapters"])


class LoadLoraIn(Strict):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1, max_length=4096)
    # vLLM: replace an adapter already loaded under this name.
    load_inplace: bool = False


class UnloadLoraIn(Strict):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_int_id: int | None = None  # accepted for vLLM compatibility; the name decides


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
             summary="vLLM-compatible: load an adapter directory under a name (admin keys)")
async def load_lora_adapter(body: LoadLoraIn, request: Request, who: AdminDep,
                            settings: SettingsDep) -> PlainTextResponse:
    await load_runtime_lora(request.app.state.runtime_loras, request.app.state.backend, settings,
                            tenant=who.tenant_id, name=body.lora_name, lora_path=body.lora_path,
                            load_inplace=body.load_inplace)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
             summary="vLLM-compatible: unload an adapter loaded by name (admin keys)")
async def unload_lora_adapter(body: UnloadLoraIn, request: Request, who: AdminDep) -> PlainTextResponse:
    await unload_runtime_lora(request.app.state.runtime_loras, request.app.state.backend,
                              tenant=who.tenant_id, name=body.lora_name)
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
