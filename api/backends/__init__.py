"""Generation backends behind ``/v1/completions`` and ``/v1/chat/completions``.

``SEAL_GENERATION_BACKEND`` picks one per API process:

* ``local`` (default): :class:`~api.backends.local.LocalBackend`, the model in this process
  (``seal_engine.serving.completions`` through :class:`~api.backends.local.InferenceService`).
* ``vllm``: :class:`~api.backends.vllm.VLLMBackend` forwards generation to a vLLM
  OpenAI-compatible server with runtime LoRA updating.

The routes validate the request and resolve ``model`` to a :class:`ModelTarget` (the base
model, or an adapter and its directory); the backend generates and answers.

* ``base``: the backend interface and :class:`ModelTarget`.
* ``openai_format``: the OpenAI wire format both backends speak (messages, usage, SSE).
* ``runtime_loras``: adapters loaded by name through ``/v1/load_lora_adapter``.
"""

from __future__ import annotations

from api.backends.base import GenerationBackend, ModelTarget
from api.backends.local import InferenceService, LocalBackend
from api.backends.runtime_loras import RuntimeLoras
from api.backends.vllm import VLLMBackend
from seal_service.settings import Settings

__all__ = ["GenerationBackend", "InferenceService", "LocalBackend", "ModelTarget", "RuntimeLoras", "VLLMBackend",
           "make_backend"]


def make_backend(settings: Settings, inference: InferenceService) -> GenerationBackend:
    if settings.generation_backend == "vllm":
        return VLLMBackend(settings)
    return LocalBackend(inference)
