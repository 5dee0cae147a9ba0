"""What the completion routes need from a generation backend, and what a request's ``model`` names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import Response

from api.schemas import ChatCompletionIn, CompletionIn
from seal_engine.core.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS


@dataclass(frozen=True)
class ModelTarget:
    """What a request's ``model`` names.

    ``adapter`` is the adapter's name for the backend (the registry id, or a runtime LoRA's
    name), None for the base model; ``path`` is its directory.
    """

    model: str
    adapter: str | None = None
    path: Path | None = None


def has_adapter_files(path: Path) -> bool:
    """Whether ``path`` is a PEFT adapter directory (its config and weights files)."""
    return (path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()


class GenerationBackend:
    """What the completion routes need from a backend."""

    name = "?"

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def preload(self) -> None:
        """Warm up in the background (failures surface at the first request)."""

    async def prepare_adapter(self, path: Path) -> None:
        """Check (and warm) the adapter at ``path``; raises with a message if it cannot be served."""
        raise NotImplementedError

    async def forget_adapter(self, target: ModelTarget) -> None:
        """The adapter was deleted or unloaded: drop what is held for it."""

    async def chat(self, body: ChatCompletionIn, target: ModelTarget, max_tokens: int) -> Response:
        raise NotImplementedError

    async def completions(self, body: CompletionIn, target: ModelTarget, max_tokens: int,
                          prompts: list[str]) -> Response:
        raise NotImplementedError

    async def check(self) -> dict[str, Any]:
        """Readiness of the backend (for /readyz)."""
        return {"ok": True, "backend": self.name}
