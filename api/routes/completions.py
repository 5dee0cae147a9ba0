"""OpenAI-compatible /v1/chat/completions and /v1/completions (streaming and not).

``model`` is the base model id, one of the caller's adapter ids or aliases (see /v1/models), or, for
admin keys, a name loaded through ``POST /v1/load_lora_adapter``. The routes check the
request and resolve ``model``; the generation backend (``SEAL_GENERATION_BACKEND``: this
process, or a vLLM server) generates and answers.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.backends import GenerationBackend, ModelTarget
from api.backends.runtime_loras import RuntimeLoras, lora_target
from api.deps import Principal, PrincipalDep, SettingsDep
from api.errors import field_error
from api.schemas import ChatCompletionIn, CompletionIn, _SamplingParams
from api.services import models
from seal_service.settings import Settings

router = APIRouter(tags=["completions"])


def runtime_target(request: Request, who: Principal, model: str) -> ModelTarget | None:
    """The runtime LoRA ``model`` names, for admin keys of the tenant that loaded it."""
    if not who.is_admin:
        return None
    loras: RuntimeLoras = request.app.state.runtime_loras
    lora = loras.get(who.tenant_id, model)
    return lora_target(who.tenant_id, lora) if lora is not None else None


async def resolve_model(request: Request, who: Principal, model: str) -> ModelTarget:
    """The base model, a runtime LoRA (admin keys) or one of the tenant's adapters; 404 otherwise."""
    settings: Settings = request.app.state.settings
    if model == settings.model_id:
        return ModelTarget(model)
    target = runtime_target(request, who, model)
    if target is not None:
        return target
    factory = request.app.state.sessionmaker

    def lookup() -> tuple[str, str]:
        with factory() as db:
            return models.served_adapter(db=db, tenant_id=who.tenant_id, model_id=model, base_model=settings.model_id)

    # An alias names whichever version it points at now; the response echoes the name asked for.
    adapter_id, path = await asyncio.to_thread(lookup)
    return ModelTarget(model, adapter=adapter_id, path=Path(path))


def _limits(settings: Settings, params: _SamplingParams, field: str, asked: int | None, default: int,
            prompts: int = 1) -> int:
    """The request's max_tokens, within the server's bounds; 422 naming the field past them.

    ``field`` is where ``asked`` came from (max_tokens or max_completion_tokens). The work of a
    request, prompts x n x max_tokens, is bounded too (SEAL_MAX_REQUEST_TOKENS): past it an
    explicit max_tokens is refused, and the default one shrinks to fit.
    """
    if params.n > settings.max_choices:
        raise field_error(("n",), f"at most {settings.max_choices} on this server")
    rows = prompts * params.n
    budget = settings.max_request_tokens
    if asked is None:
        max_tokens = min(default, settings.max_completion_tokens, max(1, budget // rows))
    elif asked > settings.max_completion_tokens:
        raise field_error((field,), f"at most {settings.max_completion_tokens} on this server")
    else:
        max_tokens = asked
    if rows * max_tokens > budget:
        where = field if asked is not None or rows == 1 else ("n" if params.n > 1 else "prompt")
        raise field_error((where,), f"this request asks for up to {rows * max_tokens} tokens (prompts {prompts} x "
                                    f"n {params.n} x max_tokens {max_tokens}); at most {budget} per request on "
                                    "this server")
    return max_tokens


@router.post("/v1/chat/completions", response_model=None, summary="OpenAI-compatible chat completion")
async def chat_completions(body: ChatCompletionIn, request: Request, who: PrincipalDep,
                           settings: SettingsDep) -> Response:
    # max_completion_tokens replaces the deprecated max_tokens (OpenAI); errors name the one given.
    field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = _limits(settings, body, field, asked, settings.default_max_tokens)
    request.app.state.limits.charge_tokens(who.tenant_id, body.n * max_tokens)
    target = await resolve_model(request, who, body.model)
    backend: GenerationBackend = request.app.state.backend
    return await backend.chat(body, target, max_tokens)


@router.post("/v1/completions", response_model=None, summary="OpenAI-compatible text completion")
async def completions(body: CompletionIn, request: Request, who: PrincipalDep, settings: SettingsDep) -> Response:
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if len(prompts) * body.n > settings.max_batch_size * settings.max_choices:
        raise field_error(("prompt",), "too many prompts x choices")
    # 16: OpenAI's default max_tokens for text completions.
    max_tokens = _limits(settings, body, "max_tokens", body.max_tokens, 16, len(prompts))
    request.app.state.limits.charge_tokens(who.tenant_id, len(prompts) * body.n * max_tokens)
    target = await resolve_model(request, who, body.model)
    backend: GenerationBackend = request.app.state.backend
    return await backend.completions(body, target, max_tokens, prompts)
