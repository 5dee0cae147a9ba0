"""Generation in this process: :class:`LocalBackend` over :class:`InferenceService`.

The service calls only ``seal_engine.serving.completions``; how rows are decoded together is the
engine's job. Every request joins one running batch (continuous batching:
``seal_engine.serving.batcher.ContinuousBatcher``, whose decoding thread admits new rows
between steps and streams tokens as they are produced); the asyncio side only waits
on its futures and streams. Model work never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse, Response

from api.backends.base import GenerationBackend, ModelTarget
from api.backends.openai_format import chat_messages, sse, sse_error, stream_response, usage
from api.errors import APIError, field_error, not_found
from api.schemas import ChatCompletionIn, CompletionIn
from seal_engine.core.lora import LoraAdapter, module_paths
from seal_engine.core.model import ModelBundle, get_model
from seal_engine.serving import completions as serving
from seal_engine.serving.batcher import ContinuousBatcher
from seal_engine.serving.completions import (
    Completion,
    CompletionRequest,
    Prompt,
    chat_prompt_ids,
    count_tokens,
)
from seal_service.settings import Settings

log = logging.getLogger("seal.api.inference")


class InferenceService:
    """The base model (loaded on first use), the adapter LRU and the running batch of one API process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.adapters = serving.AdapterCache(settings.adapter_cache_size)
        self._bundle: ModelBundle | None = None
        self._bundle_lock = threading.Lock()
        self._engine: ContinuousBatcher | None = None
        self._engine_lock = threading.Lock()

    # --- model and adapters (blocking: call from a thread) ---------------------------------
    def bundle(self) -> ModelBundle:
        if self._bundle is None:
            with self._bundle_lock:
                if self._bundle is None:
                    self._bundle = get_model(self.settings)
        return self._bundle

    def preload(self) -> None:
        """Load the model in a background thread (failures surface at the first request)."""

        def run() -> None:
            try:
                self.bundle()
            except Exception:
                log.warning("could not preload the model", exc_info=True)

        threading.Thread(target=run, name="seal-preload", daemon=True).start()

    def adapter(self, directory: str | Path) -> LoraAdapter:
        return self.adapters.get(directory)

    def evict(self, directory: str | Path) -> None:
        self.adapters.evict(directory)

    def engine(self) -> ContinuousBatcher:
        """The running batch (its decoding thread starts with the first request)."""
        if self._engine is None:
            bundle = self.bundle()
            with self._engine_lock:
                if self._engine is None:
                    self._engine = ContinuousBatcher(bundle, max_rows=self.settings.max_batch_size)
        return self._engine

    # --- async API ---------------------------------------------------------------------------
    async def get_bundle(self) -> ModelBundle:
        if self._bundle is not None:
            return self._bundle
        return await asyncio.to_thread(self.bundle)

    async def get_adapter(self, directory: str | Path) -> LoraAdapter:
        return await asyncio.to_thread(self.adapter, directory)

    async def get_engine(self) -> ContinuousBatcher:
        if self._engine is not None:
            return self._engine
        return await asyncio.to_thread(self.engine)

    async def complete(self, request: CompletionRequest) -> list[Completion]:
        engine = await self.get_engine()
        return await asyncio.wrap_future(serving.submit(engine, request))

    async def stream(self, request: CompletionRequest, choice: int = 0) -> AsyncIterator[str]:
        """Text deltas of one completion (choice ``choice`` of the request) as its row in the
        running batch produces them."""
        bundle = await self.get_bundle()
        engine = await self.get_engine()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            deltas = serving.stream_completion(bundle, request, engine, choice)
            try:
                for delta in deltas:
                    loop.call_soon_threadsafe(queue.put_nowait, ("delta", delta))
                    if stop.is_set():
                        break
            except BaseException as e:  # handed to the consumer
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))
            finally:
                deltas.close()  # a consumer that left takes its row out of the batch
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        thread = threading.Thread(target=produce, name="seal-stream", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "delta":
                    yield value  # type: ignore[misc]
                elif kind == "error":
                    raise value  # type: ignore[misc]
                else:
                    return
        finally:
            stop.set()

    async def stop(self) -> None:
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)


def _check_fits(bundle: Any, adapter: LoraAdapter) -> None:
    """Raise ValueError unless every LoRA tensor matches a Linear layer of the base model."""
    from torch import nn

    prefix = "base_model.model."
    paths = module_paths(adapter)
    if not paths:
        raise ValueError("the adapter has no LoRA weights")
    for path in paths:
        try:
            # Under the model's lock: the decoding thread wraps these layers while it runs a step.
            with bundle.lock:
                module = bundle.model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"the base model has no module {path!r}") from None
        if not isinstance(module, nn.Linear):
            raise ValueError(f"{path} is not a Linear layer of the base model")
        a = adapter.state.get(f"{prefix}{path}.lora_A.weight")
        b = adapter.state.get(f"{prefix}{path}.lora_B.weight")
        r = adapter.config.r
        if (a is None or b is None or tuple(a.shape) != (r, module.in_features)
                or tuple(b.shape) != (module.out_features, r)):
            raise ValueError(f"the LoRA weights of {path} do not fit the base model (rank {r})")


class LocalBackend(GenerationBackend):
    """Generation in this process: the base model, the adapter LRU and the running batch."""

    name = "local"

    def __init__(self, inference: InferenceService) -> None:
        self.inference = inference
        self.settings = inference.settings

    async def stop(self) -> None:
        await self.inference.stop()

    def preload(self) -> None:
        self.inference.preload()

    async def prepare_adapter(self, path: Path) -> None:
        adapter = await self.inference.get_adapter(path)
        try:
            bundle = await self.inference.get_bundle()
        except Exception as e:
            raise APIError(503, f"the base model could not be loaded: {type(e).__name__}: {e}"[:1000],
                           code="model_unavailable") from None
        try:
            await asyncio.to_thread(_check_fits, bundle, adapter)
        except Exception:
            self.inference.evict(path)
            raise

    async def forget_adapter(self, target: ModelTarget) -> None:
        if target.path is not None:
            self.inference.evict(target.path)

    async def check(self) -> dict[str, Any]:
        return {"ok": True, "backend": self.name, "model_loaded": self.inference._bundle is not None}  # noqa: SLF001

    async def _adapter(self, target: ModelTarget) -> LoraAdapter | None:
        if target.adapter is None:
            return None
        try:
            return await self.inference.get_adapter(target.path)
        except Exception as e:
            raise not_found("model", target.model, "model") from e

    async def _check_context(self, prompts: list[Prompt], max_tokens: int, param: str) -> list[int]:
        bundle = await self.inference.get_bundle()
        counts = await asyncio.to_thread(lambda: [serving.prompt_tokens(bundle, p) for p in prompts])
        limit = getattr(bundle.model.config, "max_position_embeddings", None)
        if limit and max(counts) + max_tokens > limit:
            raise APIError(400, f"this model's context is {limit} tokens; the request needs {max(counts)} for the "
                                f"prompt plus max_tokens={max_tokens}", code="context_length_exceeded", param=param)
        return counts

    async def _stream_choices(self, reqs: list[tuple[int, int, CompletionRequest]], make_chunk, final_chunk,
                              usage_chunk, include_usage: bool, prompt_tokens: int,
                              ) -> AsyncIterator[bytes]:  # noqa: ANN001
        """OpenAI chunks of every (index, choice, request), then ``data: [DONE]``.

        The choices decode concurrently, as rows of the same running batch, so n choices take
        about the time of one; chunks of different choices interleave, as OpenAI's do.
        """
        bundle = await self.inference.get_bundle()
        queue: asyncio.Queue[tuple[int, str, Any]] = asyncio.Queue()

        async def pump(index: int, choice: int, req: CompletionRequest) -> None:
            try:
                async for delta in self.inference.stream(req, choice):
                    if delta:
                        await queue.put((index, "delta", delta))
                await queue.put((index, "end", None))
            except Exception as e:  # noqa: BLE001  (handed to the response)
                await queue.put((index, "error", e))

        by_index = {index: req for index, _, req in reqs}
        texts = dict.fromkeys(by_index, "")
        tasks = [asyncio.create_task(pump(index, choice, req)) for index, choice, req in reqs]
        completion_tokens = 0
        try:
            for _ in range(len(tasks)):
                while True:
                    index, kind, value = await queue.get()
                    if kind != "delta":
                        break
                    yield sse(make_chunk(index, value, not texts[index]))
                    texts[index] += value
                if kind == "error":
                    raise value
                if not texts[index]:
                    yield sse(make_chunk(index, "", True))
                n_tokens = await asyncio.to_thread(count_tokens, bundle, texts[index])
                limit = by_index[index].max_tokens
                yield sse(final_chunk(index, "length" if n_tokens >= limit else "stop"))
                completion_tokens += min(n_tokens, limit)
            if include_usage:
                yield sse(usage_chunk(usage(prompt_tokens, completion_tokens)))
        except Exception as e:  # headers are sent: report in-band
            yield sse_error(f"{type(e).__name__}: {e}")
        finally:  # a client that left, or an error: the other choices' rows leave the batch
            for t in tasks:
                t.cancel()
        yield sse("[DONE]")

    async def chat(self, body: ChatCompletionIn, target: ModelTarget, max_tokens: int) -> Response:
        adapter = await self._adapter(target)
        bundle = await self.inference.get_bundle()
        messages = chat_messages(body)
        try:
            # Token ids: the template's control tokens, and the contents as text (no forged turns).
            prompt = await asyncio.to_thread(chat_prompt_ids, bundle, messages)
        except Exception as e:  # a template that rejects this conversation (e.g. role order)
            raise field_error(("messages",), f"cannot render these messages: {e}") from None
        (prompt_tokens,) = await self._check_context([prompt], max_tokens, "messages")
        stop = body.stop_list()
        created = int(time.time())
        cid = f"chatcmpl-{uuid.uuid4().hex}"

        def req(n: int) -> CompletionRequest:
            return CompletionRequest(prompt=prompt, adapter=adapter, max_tokens=max_tokens,
                                     temperature=body.temperature, top_p=body.top_p, stop=stop, n=n, seed=body.seed,
                                     relevance=body.relevance)

        if body.stream:
            base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "system_fingerprint": None}

            def chunk(index: int, delta: str, first: bool) -> dict:
                d = {"role": "assistant", "content": delta} if first else {"content": delta}
                return {**base, "choices": [{"index": index, "delta": d, "logprobs": None, "finish_reason": None}]}

            def final(index: int, reason: str) -> dict:
                return {**base, "choices": [{"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}]}

            def usage_chunk(u: dict) -> dict:
                return {**base, "choices": [], "usage": u}

            include = bool(body.stream_options and body.stream_options.include_usage)
            return stream_response(self._stream_choices([(i, i, req(1)) for i in range(body.n)], chunk, final,
                                                        usage_chunk, include, prompt_tokens))

        completions: list[Completion] = await self.inference.complete(req(body.n))
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                 "finish_reason": c.finish_reason}
                for i, c in enumerate(completions)
            ],
            "usage": usage(prompt_tokens, sum(c.completion_tokens for c in completions)),
            # Whether the adapter answered (False: its relevance check gave the request to the base model).
            "adapter_served": completions[0].adapter_served if completions else None,
        })

    async def completions(self, body: CompletionIn, target: ModelTarget, max_tokens: int,
                          prompts: list[str]) -> Response:
        adapter = await self._adapter(target)
        counts = await self._check_context(prompts, max_tokens, "prompt")
        stop = body.stop_list()
        created = int(time.time())
        cid = f"cmpl-{uuid.uuid4().hex}"

        def req(prompt: str, n: int) -> CompletionRequest:
            return CompletionRequest(prompt=prompt, adapter=adapter, max_tokens=max_tokens,
                                     temperature=body.temperature, top_p=body.top_p, stop=stop, n=n, seed=body.seed,
                                     relevance=body.relevance)

        if body.stream:
            base = {"id": cid, "object": "text_completion", "created": created, "model": body.model,
                    "system_fingerprint": None}

            def chunk(index: int, delta: str, _first: bool) -> dict:
                return {**base, "choices": [{"index": index, "text": delta, "logprobs": None, "finish_reason": None}]}

            def final(index: int, reason: str) -> dict:
                return {**base, "choices": [{"index": index, "text": "", "logprobs": None, "finish_reason": reason}]}

            def usage_chunk(u: dict) -> dict:
                return {**base, "choices": [], "usage": u}

            include = bool(body.stream_options and body.stream_options.include_usage)
            reqs = [(pi * body.n + j, j, req(p, 1)) for pi, p in enumerate(prompts) for j in range(body.n)]
            return stream_response(self._stream_choices(reqs, chunk, final, usage_chunk, include, sum(counts)))

        results = await asyncio.gather(*(self.inference.complete(req(p, body.n)) for p in prompts))
        choices = []
        completion_tokens = 0
        for pi, comps in enumerate(results):
            for j, c in enumerate(comps):
                # Per choice: each prompt is checked for relevance on its own.
                choices.append({"index": pi * body.n + j, "text": c.text, "logprobs": None,
                                "finish_reason": c.finish_reason, "adapter_served": c.adapter_served})
                completion_tokens += c.completion_tokens
        return JSONResponse({
            "id": cid, "object": "text_completion", "created": created, "model": body.model,
            "system_fingerprint": None, "choices": choices, "usage": usage(sum(counts), completion_tokens),
        })
