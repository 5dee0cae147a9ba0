"""OpenAI-compatible /v1/chat/completions and /v1/completions (streaming and not).

``model`` is the base model id or one of the caller's adapter ids (see /v1/models).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from seal_engine.lora import LoraAdapter
from seal_engine.serving import Completion, CompletionRequest, chat_prompt, count_tokens

from ..deps import Principal, PrincipalDep, SettingsDep
from ..errors import APIError, field_error, not_found
from ..inference import InferenceService
from ..schemas import ChatCompletionIn, CompletionIn, _SamplingParams
from ..settings import Settings
from .models import find_adapter

router = APIRouter(tags=["completions"])


async def resolve_model(request: Request, who: Principal, model: str) -> LoraAdapter | None:
    """None for the base model, the loaded adapter for an adapter id; 404 otherwise."""
    settings: Settings = request.app.state.settings
    if model == settings.model_id:
        return None
    factory = request.app.state.sessionmaker

    def lookup() -> str:
        with factory() as db:
            try:
                row = find_adapter(db, who, model, param="model")
            except APIError:
                raise APIError(404, f"The model {model!r} does not exist or you do not have access to it.",
                               code="model_not_found", param="model") from None
            if row.base_model != settings.model_id:
                raise APIError(404, f"adapter {model!r} was trained for {row.base_model!r}, "
                                    f"which this server does not serve", code="model_not_found", param="model")
            return row.storage_path

    path = await asyncio.to_thread(lookup)
    inference: InferenceService = request.app.state.inference
    try:
        return await inference.get_adapter(path)
    except Exception as e:
        raise not_found("model", model, "model") from e


def _limits(settings: Settings, params: _SamplingParams, max_tokens: int | None) -> int:
    if max_tokens is None:
        max_tokens = min(settings.default_max_tokens, settings.max_completion_tokens)
    if max_tokens > settings.max_completion_tokens:
        raise field_error(("max_tokens",), f"at most {settings.max_completion_tokens} on this server")
    if params.n > settings.max_choices:
        raise field_error(("n",), f"at most {settings.max_choices} on this server")
    return max_tokens


async def _check_context(request: Request, prompts: list[str], max_tokens: int, param: str) -> list[int]:
    inference: InferenceService = request.app.state.inference
    bundle = await inference.get_bundle()
    counts = await asyncio.to_thread(lambda: [count_tokens(bundle, p) for p in prompts])
    limit = getattr(bundle.model.config, "max_position_embeddings", None)
    if limit and max(counts) + max_tokens > limit:
        raise APIError(400, f"this model's context is {limit} tokens; the request needs {max(counts)} for the "
                            f"prompt plus max_tokens={max_tokens}", code="context_length_exceeded", param=param)
    return counts


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def _sse_error(message: str) -> bytes:
    return _sse({"error": {"message": message, "type": "server_error", "param": None, "code": "internal_error"}})


async def _stream_choices(request: Request, reqs: list[tuple[int, CompletionRequest]], make_chunk,
                          final_chunk, usage_chunk, include_usage: bool, prompt_tokens: int,
                          ) -> AsyncIterator[bytes]:  # noqa: ANN001
    """Decode each choice in turn, as OpenAI chunks, then ``data: [DONE]``."""
    inference: InferenceService = request.app.state.inference
    bundle = await inference.get_bundle()
    completion_tokens = 0
    try:
        for index, req in reqs:
            text = ""
            first = True
            async for delta in inference.stream(req):
                if not delta:
                    continue
                text += delta
                yield _sse(make_chunk(index, delta, first))
                first = False
            if first:
                yield _sse(make_chunk(index, "", True))
            n_tokens = await asyncio.to_thread(count_tokens, bundle, text)
            reason = "length" if n_tokens >= req.max_tokens else "stop"
            yield _sse(final_chunk(index, reason))
            completion_tokens += min(n_tokens, req.max_tokens)
        if include_usage:
            yield _sse(usage_chunk(_usage(prompt_tokens, completion_tokens)))
    except Exception as e:  # headers are sent: report in-band
        yield _sse_error(f"{type(e).__name__}: {e}")
    yield _sse("[DONE]")


_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/v1/chat/completions", response_model=None, summary="OpenAI-compatible chat completion")
async def chat_completions(body: ChatCompletionIn, request: Request, who: PrincipalDep,
                           settings: SettingsDep) -> JSONResponse | StreamingResponse:
    max_tokens = _limits(settings, body, body.max_completion_tokens or body.max_tokens)
    adapter = await resolve_model(request, who, body.model)
    inference: InferenceService = request.app.state.inference
    bundle = await inference.get_bundle()
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    try:
        prompt = await asyncio.to_thread(chat_prompt, bundle, messages)
    except Exception as e:  # a template that rejects this conversation (e.g. role order)
        raise field_error(("messages",), f"cannot render these messages: {e}") from None
    (prompt_tokens,) = await _check_context(request, [prompt], max_tokens, "messages")
    stop = body.stop_list()
    created = int(time.time())
    cid = f"chatcmpl-{uuid.uuid4().hex}"

    def req(n: int) -> CompletionRequest:
        return CompletionRequest(prompt=prompt, adapter=adapter, max_tokens=max_tokens, temperature=body.temperature,
                                 top_p=body.top_p, stop=stop, n=n, seed=body.seed)

    if body.stream:
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                "system_fingerprint": None}

        def chunk(index: int, delta: str, first: bool) -> dict:
            d = {"role": "assistant", "content": delta} if first else {"content": delta}
            return {**base, "choices": [{"index": index, "delta": d, "logprobs": None, "finish_reason": None}]}

        def final(index: int, reason: str) -> dict:
            return {**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]}

        def usage(u: dict) -> dict:
            return {**base, "choices": [], "usage": u}

        include = bool(body.stream_options and body.stream_options.include_usage)
        gen = _stream_choices(request, [(i, req(1)) for i in range(body.n)], chunk, final, usage, include,
                             prompt_tokens)
        return StreamingResponse(gen, media_type="text/event-stream", headers=_STREAM_HEADERS)

    completions: list[Completion] = await inference.complete(req(body.n))
    return JSONResponse({
        "id": cid, "object": "chat.completion", "created": created, "model": body.model, "system_fingerprint": None,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
             "finish_reason": c.finish_reason}
            for i, c in enumerate(completions)
        ],
        "usage": _usage(prompt_tokens, sum(c.completion_tokens for c in completions)),
    })


@router.post("/v1/completions", response_model=None, summary="OpenAI-compatible text completion")
async def completions(body: CompletionIn, request: Request, who: PrincipalDep,
                      settings: SettingsDep) -> JSONResponse | StreamingResponse:
    max_tokens = _limits(settings, body, body.max_tokens if body.max_tokens is not None else 16)
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if len(prompts) * body.n > settings.max_batch_size * settings.max_choices:
        raise field_error(("prompt",), "too many prompts x choices")
    adapter = await resolve_model(request, who, body.model)
    inference: InferenceService = request.app.state.inference
    counts = await _check_context(request, prompts, max_tokens, "prompt")
    stop = body.stop_list()
    created = int(time.time())
    cid = f"cmpl-{uuid.uuid4().hex}"

    def req(prompt: str, n: int) -> CompletionRequest:
        return CompletionRequest(prompt=prompt, adapter=adapter, max_tokens=max_tokens, temperature=body.temperature,
                                 top_p=body.top_p, stop=stop, n=n, seed=body.seed)

    if body.stream:
        base = {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                "system_fingerprint": None}

        def chunk(index: int, delta: str, _first: bool) -> dict:
            return {**base, "choices": [{"index": index, "text": delta, "logprobs": None, "finish_reason": None}]}

        def final(index: int, reason: str) -> dict:
            return {**base, "choices": [{"index": index, "text": "", "logprobs": None, "finish_reason": reason}]}

        def usage(u: dict) -> dict:
            return {**base, "choices": [], "usage": u}

        include = bool(body.stream_options and body.stream_options.include_usage)
        reqs = [(pi * body.n + j, req(p, 1)) for pi, p in enumerate(prompts) for j in range(body.n)]
        gen = _stream_choices(request, reqs, chunk, final, usage, include, sum(counts))
        return StreamingResponse(gen, media_type="text/event-stream", headers=_STREAM_HEADERS)

    results = await asyncio.gather(*(inference.complete(req(p, body.n)) for p in prompts))
    choices = []
    completion_tokens = 0
    for pi, comps in enumerate(results):
        for j, c in enumerate(comps):
            choices.append({"index": pi * body.n + j, "text": c.text, "logprobs": None,
                            "finish_reason": c.finish_reason})
            completion_tokens += c.completion_tokens
    return JSONResponse({
        "id": cid, "object": "text_completion", "created": created, "model": body.model, "system_fingerprint": None,
        "choices": choices, "usage": _usage(sum(counts), completion_tokens),
    })
