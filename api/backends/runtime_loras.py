"""Adapters loaded by name through vLLM's runtime LoRA endpoints (``/v1/load_lora_adapter``).

Loaded names live in this process's memory, per tenant, as in vLLM. :func:`load_runtime_lora`
and :func:`unload_runtime_lora` check the request, tell the generation backend and keep the
registry; they answer like vLLM (400 when a name is already loaded, 404 when an unloaded name
is unknown).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from api.backends.base import GenerationBackend, ModelTarget, has_adapter_files
from api.errors import APIError
from seal_engine.core.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from seal_service.settings import Settings

MAX_RUNTIME_LORAS = 10_000


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


def lora_target(tenant: str, lora: RuntimeLora) -> ModelTarget:
    # Tenants may reuse a name: the backend (e.g. a vLLM server) knows it as tenant/name.
    return ModelTarget(lora.name, adapter=f"{tenant}/{lora.name}", path=lora.path)


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
        ok = has_adapter_files(real)
    except OSError:
        ok = False
    if not ok:
        raise _bad_path(f"no PEFT adapter at {raw!r} (a directory with {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    return real


async def load_runtime_lora(loras: RuntimeLoras, backend: GenerationBackend, settings: Settings, *, tenant: str,
                            name: str, lora_path: str, load_inplace: bool) -> None:
    """Make ``name`` serve the adapter at ``lora_path`` for ``tenant`` (``load_inplace``: replace it)."""
    if name == settings.model_id:
        raise APIError(400, "lora_name must differ from the base model's name", code="invalid_lora_name",
                       param="lora_name")
    existing = loras.get(tenant, name)
    if existing is not None and not load_inplace:
        raise APIError(400, f"The lora adapter '{name}' has already been loaded.", code="lora_already_loaded",
                       param="lora_name")
    path = await asyncio.to_thread(resolve_lora_path, settings, lora_path)
    if existing is not None:  # load_inplace: drop the old weights (the files may have changed in place)
        await backend.forget_adapter(lora_target(tenant, existing))
    try:
        await backend.prepare_adapter(path)
    except APIError:
        raise
    except Exception as e:  # unreadable files, or weights that do not fit the base model
        raise APIError(400, f"cannot load the adapter at {lora_path!r}: {type(e).__name__}: {e}"[:1000],
                       code="invalid_lora_adapter", param="lora_path") from None
    added, _ = loras.add(tenant, RuntimeLora(name, path, int(time.time())), replace=load_inplace)
    if not added:  # loaded concurrently under the same name
        raise APIError(400, f"The lora adapter '{name}' has already been loaded.", code="lora_already_loaded",
                       param="lora_name")


async def unload_runtime_lora(loras: RuntimeLoras, backend: GenerationBackend, *, tenant: str, name: str) -> None:
    """Forget ``name`` for ``tenant`` (404 when it is not loaded)."""
    lora = loras.remove(tenant, name)
    if lora is None:
        raise APIError(404, f"The lora adapter '{name}' cannot be found.", code="lora_not_found",
                       param="lora_name")
    await backend.forget_adapter(lora_target(tenant, lora))
