"""Generation on a vLLM server: :class:`VLLMBackend`.

It forwards generation to a vLLM OpenAI-compatible server started with ``--enable-lora`` and
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. Requests go through the official ``openai`` client;
adapters are loaded into the server on first use through its ``POST /v1/load_lora_adapter`` and
unloaded (least recently used first) through ``POST /v1/unload_lora_adapter`` once more than
``SEAL_ADAPTER_CACHE_SIZE`` are loaded.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
from fastapi.responses import JSONResponse, Response

from api.backends.base import GenerationBackend, ModelTarget, has_adapter_files
from api.backends.openai_format import chat_messages, error_message, response_message, sse, sse_error, stream_response
from api.errors import APIError
from api.schemas import ChatCompletionIn, CompletionIn
from seal_service.settings import Settings

log = logging.getLogger("seal.api.backends")

# Text shaped like the control tokens of common chat formats: <|im_end|>, <|eot_id|> (ChatML, Llama 3,
# Phi, Qwen; DeepSeek's full-width bars too), <s>, </s>, [INST], [/INST], <start_of_turn>, <end_of_turn>.
_CONTROL_SHAPED = re.compile(r"<[|\uff5c][^<>\n]{1,64}?[|\uff5c]>|</?s>|\[/?INST\]|<(?:start|end)_of_turn>")
_ZWSP = "\u200b"


def escape_control_text(text: str) -> str:
    """``text`` with a zero-width space after the first character of anything shaped like a control
    token, so that the vLLM server's tokenizer reads it as text, not as a turn boundary.

    vLLM renders the chat template and tokenizes the result itself, recognizing control-token
    text wherever it is, and has no option to keep message contents as text; this backend has no
    tokenizer to send token ids instead. The local backend needs no escape (it tokenizes contents
    as text: ``seal_engine.serving.completions.chat_prompt_ids``).
    """
    return _CONTROL_SHAPED.sub(lambda m: m[0][0] + _ZWSP + m[0][1:], text)


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
        message = response_message(r)
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
            log.warning("vLLM: could not unload adapter %s: %s %s", name, r.status_code, response_message(r))

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
        if not has_adapter_files(path):
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
                    "error": f"{self.base_url}/models answered {r.status_code}: {response_message(r)}"[:500]}
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
            status, message = e.status_code, error_message(e.body) or e.message
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
                        yield sse(data)
                except Exception as e:  # headers are sent: report in-band
                    err = self._error(e, target.adapter or self.model) if isinstance(e, openai.APIError) else e
                    yield sse_error(err.detail if isinstance(err, APIError) else f"{type(err).__name__}: {err}")
                yield sse("[DONE]")
            finally:
                self._unpin(target)
                try:
                    await result.close()
                except Exception:  # noqa: BLE001
                    log.debug("closing the upstream stream failed", exc_info=True)

        return stream_response(relay())

    async def chat(self, body: ChatCompletionIn, target: ModelTarget, max_tokens: int) -> Response:
        messages = [{**m, "content": escape_control_text(m["content"])} for m in chat_messages(body)]
        kwargs = self._sampling(body, max_tokens)
        return await self._answer(target, body.stream, lambda model: self.client.chat.completions.create(
            model=model, messages=messages, **kwargs))  # type: ignore[arg-type]

    async def completions(self, body: CompletionIn, target: ModelTarget, max_tokens: int,
                          prompts: list[str]) -> Response:
        kwargs = self._sampling(body, max_tokens)
        return await self._answer(target, body.stream, lambda model: self.client.completions.create(
            model=model, prompt=body.prompt, **kwargs))
