"""vLLM's runtime LoRA endpoints, so that a seal API can be driven exactly like a vLLM server.

``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` makes ``model=<lora_name>`` usable
in the completion endpoints by the admin keys of the caller's tenant; ``lora_path`` must be an
adapter directory under the adapter storage (absolute, or relative to it).
``POST /v1/unload_lora_adapter`` ``{"lora_name"}`` forgets it. Both need an admin key and
answer like vLLM: ``Success: ...`` as text, 400 when the name is already loaded, 404 when an
unloaded name is unknown. Loaded names live in this process's memory, as in vLLM.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import Field

from seal_engine.core.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

from api.backends import GenerationBackend, ModelTarget
from api.deps import AdminDep, Principal, SettingsDep
from api.errors import APIError
from api.schemas import Strict
from seal_service.settings import Settings

router = APIRouter(tags=["adapters"])

MAX_RUNTIME_LORAS = 10_000


class LoadLoraIn(Strict):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1, max_length=4096)
    # vLLM: replace an adapter already loaded under this name.
    load_inplace: bool = False


class UnloadLoraIn(Strict):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_int_id: int | None = None  # accepted for vLLM compatibility; the name decides


@dataclass(frozen=True)
class RuntimeLora:
    name: str
    path: Path
    created: int


class RuntimeLoras:
    """Names loaded through /v1/load_lora_adapter, per tenant. Thread-safe."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, str], RuntimeLora] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str, name: str) -> RuntimeLora | None:
        with self._lock:
            return self._items.get((tenant, name))

    def add(self, tenant: str, lora: RuntimeLora, replace: bool) -> tuple[bool, RuntimeLora | None]:
        """(added, the entry it replaced)."""
        with self._lock:
            old = self._items.get((tenant, lora.name))
            if old is not None and not replace:
                return False, old
            if old is None and len(self._items) >= MAX_RUNTIME_LORAS:
                raise APIError(400, f"at most {MAX_RUNTIME_LORAS} LoRA adapters can be loaded by name; "
                                    "unload some first", code="too_many_loras", param="lora_name")
            self._items[(tenant, lora.name)] = lora
            return True, old

    def remove(self, tenant: str, name: str) -> RuntimeLora | None:
        with self._lock:
            return self._items.pop((tenant, name), None)

    def of_tenant(self, tenant: str) -> list[RuntimeLora]:
        with self._lock:
            return sorted((v for (t, _), v in self._items.items() if t == tenant), key=lambda v: (v.created, v.name))


def _target(tenant: str, lora: RuntimeLora) -> ModelTarget:
    # Tenants may reuse a name: the backend (e.g. a vLLM server) knows it as tenant/name.
    return ModelTarget(lora.name, adapter=f"{tenant}/{lora.name}", path=lora.path)


def runtime_target(request: Request, who: Principal, model: str) -> ModelTarget | None:
    """The runtime LoRA ``model`` names, for admin keys of the tenant that loaded it."""
    if not who.is_admin:
        return None
    lora = request.app.state.runtime_loras.get(who.tenant_id, model)
    return _target(who.tenant_id, lora) if lora is not None else None


def _bad_path(message: str) -> APIError:
    return APIError(400, message, code="invalid_lora_path", param="lora_path")


def resolve_lora_path(settings: Settings, raw: str) -> Path:
    """The adapter directory ``raw`` names, which must lie under the adapter storage (400 otherwise)."""
    storage = settings.resolved_storage_dir.resolve()
    try:
        path = Path(raw)
        real = (path if path.is_absolute() else storage / path).resolve()
    except (OSError, ValueError, RuntimeError) as e:
        raise _bad_path(f"lora_path is not a usable path: {e}") from None
    if real == storage or not real.is_relative_to(storage):
        raise _bad_path(f"lora_path must be an adapter directory under the adapter storage ({storage})")
    try:
        ok = (real / ADAPTER_CONFIG).is_file() and (real / ADAPTER_WEIGHTS).is_file()
    except OSError:
        ok = False
    if not ok:
        raise _bad_path(f"no PEFT adapter at {raw!r} (a directory with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    return real


@router.post("/v1/load_lora_adapter", response_class=PlainTextResponse,
             summary="vLLM-compatible: load an adapter directory under a name (admin keys)")
async def load_lora_adapter(body: LoadLoraIn, request: Request, who: AdminDep,
                            settings: SettingsDep) -> PlainTextResponse:
    name = body.lora_name
    if name == settings.model_id:
        raise APIError(400, "lora_name must differ from the base model's name", code="invalid_lora_name",
                       param="lora_name")
    loras: RuntimeLoras = request.app.state.runtime_loras
    existing = loras.get(who.tenant_id, name)
    if existing is not None and not body.load_inplace:
        raise APIError(400, f"The lora adapter '{name}' has already been loaded.", code="lora_already_loaded",
                       param="lora_name")
    path = await asyncio.to_thread(resolve_lora_path, settings, body.lora_path)
    backend: GenerationBackend = request.app.state.backend
    if existing is not None:  # load_inplace: drop the old weights (the files may have changed in place)
        await backend.forget_adapter(_target(who.tenant_id, existing))
    try:
        await backend.prepare_adapter(path)
    except APIError:
        raise
    except Exception as e:  # unreadable files, or weights that do not fit the base model
        raise APIError(400, f"cannot load the adapter at {body.lora_path!r}: {type(e).__name__}: {e}"[:1000],
                       code="invalid_lora_adapter", param="lora_path") from None
    added, _ = loras.add(who.tenant_id, RuntimeLora(name, path, int(time.time())), replace=body.load_inplace)
    if not added:  # loaded concurrently under the same name
        raise APIError(400, f"The lora adapter '{name}' has already been loaded.", code="lora_already_loaded",
                       param="lora_name")
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post("/v1/unload_lora_adapter", response_class=PlainTextResponse,
             summary="vLLM-compatible: unload an adapter loaded by name (admin keys)")
async def unload_lora_adapter(body: UnloadLoraIn, request: Request, who: AdminDep) -> PlainTextResponse:
    loras: RuntimeLoras = request.app.state.runtime_loras
    lora = loras.remove(who.tenant_id, body.lora_name)
    if lora is None:
        raise APIError(404, f"The lora adapter '{body.lora_name}' cannot be found.", code="lora_not_found",
                       param="lora_name")
    backend: GenerationBackend = request.app.state.backend
    await backend.forget_adapter(_target(who.tenant_id, lora))
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")
