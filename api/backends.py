"""Generation backends behind ``/v1/completions`` and ``/v1/chat/completions``.

``SEAL_GENERATION_BACKEND`` picks one per API process:

* ``local`` (default): :class:`LocalBackend`, the model in this process
  (``seal_engine.serving.completions`` through :class:`~api.inference.InferenceService`).
* ``vllm``: :class:`VLLMBackend` forwards generation to a vLLM OpenAI-compatible server
  started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. Requests go
  through the official ``openai`` client; adapters are loaded into the server on first use
  through its ``POST /v1/load_lora_adapter`` and unloaded (least recently used first) through
  ``POST /v1/unload_lora_adapter`` once more than ``SEAL_ADAPTER_CACHE_SIZE`` are loaded.

The routes validate the request and resolve ``model`` to a :class:`ModelTarget` (the base
model, or an adapter and its directory); the backend generates and answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
from fastapi.responses import JSONResponse, Response, StreamingResponse

from seal_engine.core.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraAdapter
from seal_engine.serving.completions import Completion, CompletionRequest, chat_prompt, count_tokens

from api.errors import APIError, field_error, not_found
from api.inference import InferenceService
from api.schemas import ChatCompletionIn, CompletionIn
from seal_service.settings import Settings

log = logging.getLogger("seal.api.backends")


@dataclass(frozen=True)
class ModelTarget:
    """What a request's ``model`` names.

    ``adapter`` is the adapter's name for the backend (the registry id, or a runtime LoRA's
    name), None for the base model; ``path`` is its directory.
    """

    model: str
    adapter: str | None = None
    path: Path | None = None


def chat_messages(body: ChatCompletionIn) -> list[dict[str, str]]:
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def _sse_error(message: str) -> bytes:
    return _sse({"error": {"message": message, "type": "server_error", "param": None, "code": "internal_error"}})


STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _stream_response(gen: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(gen, media_type="text/event-stream", headers=STREAM_HEADERS)


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


# --- in this process -------------------------------------------------------------------------


def _check_fits(bundle: Any, adapter: LoraAdapter) -> None:
    """Raise ValueError unless every LoRA tensor matches a Linear layer of the base model."""
    from torch import nn

    from seal_engine.training.multilora import module_paths

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
    """Generation in this process: the base model, the adapter LRU and the request batcher."""

    name = "local"

    def __init__(self, inference: InferenceService) -> None:
        self.inference = inference
        self.settings = inference.settings

    async def start(self) -> None:
        await self.inference.start()

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

    async def _check_context(self, prompts: list[str], max_tokens: int, param: str) -> list[int]:
        bundle = await self.inference.get_bundle()
        counts = await asyncio.to_thread(lambda: [count_tokens(bundle, p) for p in prompts])
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
                    yield _sse(make_chunk(index, value, not texts[index]))
                    texts[index] += value
                if kind == "error":
                    raise value
                if not texts[index]:
                    yield _sse(make_chunk(index, "", True))
                n_tokens = await asyncio.to_thread(count_tokens, bundle, texts[index])
                limit = by_index[index].max_tokens
                yield _sse(final_chunk(index, "length" if n_tokens >= limit else "stop"))
                completion_tokens += min(n_tokens, limit)
            if include_usage:
                yield _sse(usage_chunk(_usage(prompt_tokens, completion_tokens)))
        except Exception as e:  # headers are sent: report in-band
            yield _sse_error(f"{type(e).__name__}: {e}")
        finally:  # a client that left, or an error: the other choices' rows leave the batch
            for t in tasks:
                t.cancel()
        yield _sse("[DONE]")

    async def chat(self, body: ChatCompletionIn, target: ModelTarget, max_tokens: int) -> Response:
        adapter = await self._adapter(target)
        bundle = await self.inference.get_bundle()
        messages = chat_messages(body)
        try:
            prompt = await asyncio.to_thread(chat_prompt, bundle, messages)
        except Exception as e:  # a template that rejects this conversation (e.g. role order)
            raise field_error(("messages",), f"cannot render these messages: {e}") from None
        (prompt_tokens,) = await self._check_context([prompt], max_tokens, "messages")
        stop = body.stop_list()
        created = int(time.time())
        cid = f"chatcmpl-{uuid.uuid4().hex}"

        def req(n: int) -> CompletionRequest:
            return CompletionRequest(prompt=prompt, adapter=adapter, max_tokens=max_tokens,
                                     temperature=body.temperature, top_p=body.top_p, stop=stop, n=n, seed=body.seed)

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
            return _stream_response(self._stream_choices([(i, i, req(1)) for i in range(body.n)], chunk, final, usage,
                                                         include, prompt_tokens))

        completions: list[Completion] = await self.inference.complete(req(body.n))
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                 "finish_reason": c.finish_reason}
                for i, c in enumerate(completions)
            ],
            "usage": _usage(prompt_tokens, sum(c.completion_tokens for c in completions)),
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
                                     temperature=body.temperature, top_p=body.top_p, stop=stop, n=n, seed=body.seed)

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
            reqs = [(pi * body.n + j, j, req(p, 1)) for pi, p in enumerate(prompts) for j in range(body.n)]
            return _stream_response(self._stream_choices(reqs, chunk, final, usage, include, sum(counts)))

        results = await asyncio.gather(*(self.inference.complete(req(p, body.n)) for p in prompts))
        choices = []
        completion_tokens = 0
        for pi, comps in enumerate(results):
            for j, c in enumerate(comps):
                choices.append({"index": pi * body.n + j, "text": c.text, "logprobs": None,
                                "finish_reason": c.finish_reason})
                completion_tokens += c.completion_tokens
        return JSONResponse({
            "id": cid, "object": "text_completion", "created": created, "model": body.model,
            "system_fingerprint": None, "choices": choices, "usage": _usage(sum(counts), completion_tokens),
        })


# --- a vLLM server ---------------------------------------------------------------------------


def _error_message(body: object) -> str:
    """The message of an error body in either of vLLM's shapes (or FastAPI's ``detail``)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
        if "detail" in body:
            return str(body["detail"])
        return json.dumps(body)[:500]
    return str(body or "")[:500]


def _response_message(r: httpx.Response) -> str:
    try:
        return _error_message(r.json())
    except ValueError:
        return r.text.strip()[:500] or r.reason_phrase


class VLLMBackend(GenerationBackend):
    """Forwards generation to a vLLM server; keeps up to ``adapter_cache_size`` adapters loaded there.

    Adapters are loaded under their registry id (``lora_name``) from their storage directory
    (``lora_path``, as the server sees it: ``SEAL_VLLM_STORAGE_DIR``). The server must see the
    same files. ``loaded`` mirrors what this process loaded, least recently used first; when it
    is wrong (the server restarted, or another API replica unloaded an adapter), the server
    answers 404 and the request is retried once after loading the adapter again.
    """

    name = "vllm"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.resolved_vllm_base_url
        self.model = settings.resolved_vllm_model
        self.capacity = settings.adapter_cache_size
        self.loaded: OrderedDict[str, str] = OrderedDict()  # adapter name -> lora_path, LRU first
        self.load_calls: Counter[str] = Counter()
        self.unload_calls: Counter[str] = Counter()
        self._in_use: Counter[str] = Counter()  # requests in flight per adapter (never unloaded meanwhile)
        self._locks: dict[str, asyncio.Lock] = {}
        self._client: openai.AsyncOpenAI | None = None
        self._http: httpx.AsyncClient | None = None

    # --- clients ----------------------------------------------------------------------------
    @property
    def client(self) -> openai.AsyncOpenAI:
        if self._client is None:
            s = self.settings
            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=s.vllm_api_key or "EMPTY", max_retries=s.vllm_max_retries,
                timeout=openai.Timeout(s.vllm_timeout_s, connect=s.vllm_connect_timeout_s))
        return self._client

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            s = self.settings
            headers = {"Authorization": f"Bearer {s.vllm_api_key}"} if s.vllm_api_key else {}
            self._http = httpx.AsyncClient(
                headers=headers, timeout=httpx.Timeout(s.vllm_timeout_s, connect=s.vllm_connect_timeout_s),
                transport=httpx.AsyncHTTPTransport(retries=s.vllm_max_retries))
        return self._http

    async def start(self) -> None:
        pass  # clients are made on first use, on the serving event loop

    async def stop(self) -> None:
        client, http = self._client, self._http
        self._client = self._http = None
        if client is not None:
            await client.close()
        if http is not None:
            await http.aclose()

    # --- adapters on the server -------------------------------------------------------------
    def upstream_path(self, path: Path) -> str:
        """``path`` as the vLLM server sees it."""
        root = self.settings.vllm_storage_dir
        if root is None:
            return str(path)
        try:
            rel = Path(path).resolve().relative_to(self.settings.resolved_storage_dir.resolve())
        except ValueError:
            return str(path)
        return str(Path(root) / rel)

    async def _post(self, endpoint: str, body: dict) -> httpx.Response:
        url = f"{self.base_url}/{endpoint}"
        try:
            return await self.http.post(url, json=body)
        except httpx.TimeoutException:
            raise APIError(503, f"the vLLM server at {self.base_url} did not answer {endpoint} within "
                                f"{self.settings.vllm_timeout_s:g} s", code="backend_timeout") from None
        except httpx.HTTPError as e:
            raise APIError(503, f"the vLLM server at {self.base_url} is unreachable: {type(e).__name__}: {e}",
                           code="backend_unavailable") from None

    async def _load(self, name: str, path: Path) -> None:
        lora_path = self.upstream_path(path)
        self.load_calls[name] += 1
        r = await self._post("load_lora_adapter", {"lora_name": name, "lora_path": lora_path})
        if r.is_success:
            log.info("vLLM: loaded adapter %s from %s", name, lora_path)
            return
        message = _response_message(r)
        if r.status_code == 400 and "already" in message.lower():
            return  # loaded by another replica, or before this process started
        hint = ""
        if r.status_code in (404, 405) and "lora" not in message.lower():
            hint = " (start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
        elif r.status_code in (401, 403):
            hint = " (check SEAL_VLLM_API_KEY)"
        raise APIError(502, f"the vLLM server could not load adapter {name!r} from {lora_path}: "
                            f"{r.status_code} {message}{hint}", code="backend_error")

    async def _unload(self, name: str) -> None:
        self.unload_calls[name] += 1
        try:
            r = await self._post("unload_lora_adapter", {"lora_name": name})
        except APIError as e:
            log.warning("vLLM: could not unload adapter %s: %s", name, e.detail)
            return
        if r.is_success or r.status_code == 404:  # 404: already gone
            log.info("vLLM: unloaded adapter %s", name)
        else:
            log.warning("vLLM: could not unload adapter %s: %s %s", name, r.status_code, _response_message(r))

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    async def _ensure_loaded(self, name: str, path: Path, reload: bool = False) -> None:
        async with self._lock(name):
            if reload:
                self.loaded.pop(name, None)
            if name in self.loaded:
                self.loaded.move_to_end(name)
                return
            await self._load(name, path)
            self.loaded[name] = str(path)
        await self._evict_over_capacity()

    async def _evict_over_capacity(self) -> None:
        while len(self.loaded) > self.capacity:
            victim = next((n for n in self.loaded if not self._in_use.get(n)), None)
            if victim is None:
                return  # every loaded adapter is in use: unload once their requests end
            del self.loaded[victim]
            lock = self._lock(victim)
            async with lock:
                if victim not in self.loaded:
                    await self._unload(victim)
            if not lock.locked() and victim not in self.loaded:
                self._locks.pop(victim, None)

    async def _pin(self, target: ModelTarget) -> None:
        """Load the adapter on the server if needed, and keep it there until :meth:`_unpin`."""
        name = target.adapter
        if name is None:
            return
        self._in_use[name] += 1
        try:
            await self._ensure_loaded(name, target.path)  # type: ignore[arg-type]
        except BaseException:
            self._unpin(target)
            raise

    def _unpin(self, target: ModelTarget) -> None:
        name = target.adapter
        if name is None:
            return
        self._in_use[name] -= 1
        if self._in_use[name] <= 0:
            del self._in_use[name]

    async def prepare_adapter(self, path: Path) -> None:
        if not ((path / ADAPTER_CONFIG).is_file() and (path / ADAPTER_WEIGHTS).is_file()):
            raise ValueError(f"not a PEFT adapter directory: {path}")

    async def forget_adapter(self, target: ModelTarget) -> None:
        name = target.adapter
        if name is None or name not in self.loaded:
            return
        async with self._lock(name):
            if self.loaded.pop(name, None) is not None:
                await self._unload(name)

    async def check(self) -> dict[str, Any]:
        try:
            r = await self.http.get(f"{self.base_url}/models", timeout=min(5.0, self.settings.vllm_timeout_s))
        except httpx.HTTPError as e:
            return {"ok": False, "backend": self.name, "error": f"{self.base_url}: {type(e).__name__}: {e}"[:500]}
        if not r.is_success:
            return {"ok": False, "backend": self.name,
                    "error": f"{self.base_url}/models answered {r.status_code}: {_response_message(r)}"[:500]}
        try:
            ids = [m.get("id") for m in r.json().get("data", [])]
        except (ValueError, AttributeError):
            ids = []
        if self.model not in ids:
            return {"ok": False, "backend": self.name, "error": f"the vLLM server does not serve {self.model!r}"}
        return {"ok": True, "backend": self.name, "url": self.base_url, "adapters_loaded": len(self.loaded)}

    # --- requests ---------------------------------------------------------------------------
    def _error(self, e: Exception, upstream_model: str) -> APIError:
        where = f"the vLLM server at {self.base_url}"
        if isinstance(e, openai.APITimeoutError):
            return APIError(503, f"{where} did not answer within {self.settings.vllm_timeout_s:g} s",
                            code="backend_timeout")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e
            return APIError(503, f"{where} is unreachable: {type(cause).__name__}: {cause}", code="backend_unavailable")
        if isinstance(e, openai.APIStatusError):
            status, message = e.status_code, _error_message(e.body) or e.message
            if status in (400, 413, 422, 429):  # about the request itself: the caller's to fix
                code = e.code if e.code and not e.code.isdigit() else None
                return APIError(status, message, code=code, param=e.param)
            if status in (401, 403):
                return APIError(502, f"{where} refused the configured SEAL_VLLM_API_KEY: {message}",
                                code="backend_error")
            if status == 404:
                return APIError(502, f"{where} does not serve {upstream_model!r}: {message}", code="backend_error")
            if status == 503:
                return APIError(503, f"{where} is unavailable: {message}", code="backend_unavailable")
            return APIError(502, f"{where} failed with {status}: {message}", code="backend_error")
        return APIError(502, f"{where}: {type(e).__name__}: {e}", code="backend_error")

    async def _call(self, target: ModelTarget, make: Callable[[str], Awaitable[Any]]) -> Any:
        """``make(upstream model name)`` while the adapter is loaded; once more after reloading it on 404."""
        upstream = self.model if target.adapter is None else target.adapter
        try:
            try:
                return await make(upstream)
            except openai.NotFoundError:
                if target.adapter is None:
                    raise
                log.info("vLLM does not know adapter %s (restarted, or unloaded elsewhere): loading it again",
                         target.adapter)
                await self._ensure_loaded(target.adapter, target.path, reload=True)  # type: ignore[arg-type]
                return await make(upstream)
        except openai.APIError as e:
            raise self._error(e, upstream) from None

    def _sampling(self, body: ChatCompletionIn | CompletionIn, max_tokens: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                                  "n": body.n}
        stop = body.stop_list()
        if stop:
            kwargs["stop"] = stop
        if body.seed is not None:
            kwargs["seed"] = body.seed
        if body.stream:
            kwargs["stream"] = True
            if body.stream_options and body.stream_options.include_usage:
                kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    async def _answer(self, target: ModelTarget, stream: bool, make: Callable[[str], Awaitable[Any]]) -> Response:
        await self._pin(target)
        try:
            result = await self._call(target, make)
        except BaseException:
            self._unpin(target)
            raise
        if not stream:
            self._unpin(target)
            await self._evict_over_capacity()  # adapters kept past capacity while in use
            data = result.model_dump(mode="json", exclude_unset=True)
            data["model"] = target.model
            return JSONResponse(data)

        async def relay() -> AsyncIterator[bytes]:
            try:
                try:
                    async for chunk in result:
                        data = chunk.model_dump(mode="json", exclude_unset=True)
                        data["model"] = target.model
                        yield _sse(data)
                except Exception as e:  # headers are sent: report in-band
                    err = self._error(e, target.adapter or self.model) if isinstance(e, openai.APIError) else e
                    yield _sse_error(err.detail if isinstance(err, APIError) else f"{type(err).__name__}: {err}")
                yield _sse("[DONE]")
            finally:
                self._unpin(target)
                try:
                    await result.close()
                except Exception:  # noqa: BLE001
                    log.debug("closing the upstream stream failed", exc_info=True)

        return _stream_response(relay())

    async def chat(self, body: ChatCompletionIn, target: ModelTarget, max_tokens: int) -> Response:
        messages = chat_messages(body)
        kwargs = self._sampling(body, max_tokens)
        return await self._answer(target, body.stream, lambda model: self.client.chat.completions.create(
            model=model, messages=messages, **kwargs))  # type: ignore[arg-type]

    async def completions(self, body: CompletionIn, target: ModelTarget, max_tokens: int,
                          prompts: list[str]) -> Response:
        kwargs = self._sampling(body, max_tokens)
        return await self._answer(target, body.stream, lambda model: self.client.completions.create(
            model=model, prompt=body.prompt, **kwargs))


def make_backend(settings: Settings, inference: InferenceService) -> GenerationBackend:
    if settings.generation_backend == "vllm":
        return VLLMBackend(settings)
    return LocalBackend(inference)
