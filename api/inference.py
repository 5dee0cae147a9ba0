"""Inference for the OpenAI-compatible endpoints.

The service calls only ``seal_engine.serving.completions``; how rows are decoded together is the
engine's job. By default every request joins one running batch (continuous batching:
``seal_engine.serving.batcher.ContinuousBatcher``, whose decoding thread admits new rows
between steps and streams tokens as they are produced); the asyncio side only waits
on its futures and streams. With a custom ``complete_fn`` (tests, or an engine without
step-level batching), :class:`CompletionBatcher` instead coalesces requests that arrive
within ``batch_window_ms`` into one call. Model work never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from seal_engine.serving import completions as serving
from seal_engine.serving.batcher import ContinuousBatcher
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle, get_model
from seal_engine.serving.completions import Completion, CompletionRequest

from seal_service.settings import Settings

log = logging.getLogger("seal.api.inference")

CompleteFn = Callable[[ModelBundle, Sequence[CompletionRequest]], list[list[Completion]]]


@dataclass
class _Pending:
    request: CompletionRequest
    future: asyncio.Future


class CompletionBatcher:
    """Gathers requests for up to ``window_s`` (or ``max_batch`` of them) and runs them as one call."""

    def __init__(self, run: Callable[[list[CompletionRequest]], list[list[Completion]]], window_s: float,
                 max_batch: int) -> None:
        self._run = run
        self.window_s = window_s
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self.batches_run = 0

    def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="seal-completion-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                p = self._queue.get_nowait()
                if not p.future.done():
                    p.future.set_exception(RuntimeError("server shutting down"))

    async def submit(self, request: CompletionRequest) -> list[Completion]:
        if self._task is None:
            self.start()
        assert self._queue is not None
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(request, fut))
        return await fut

    async def _gather(self) -> list[_Pending]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.window_s
        while len(batch) < self.max_batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                while len(batch) < self.max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [p for p in batch if not p.future.done()]

    async def _loop(self) -> None:
        while True:
            batch = await self._gather()
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self._run, [p.request for p in batch])
                self.batches_run += 1
            except Exception as e:
                if len(batch) == 1:
                    self._fail(batch[0], e)
                    continue
                # One bad request must not fail its neighbours: run them one by one.
                log.warning("batch of %d failed; retrying requests one by one", len(batch), exc_info=True)
                for p in batch:
                    try:
                        res = await asyncio.to_thread(self._run, [p.request])
                        if not p.future.done():
                            p.future.set_result(res[0])
                    except Exception as e1:
                        self._fail(p, e1)
                continue
            for p, res in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(res)

    @staticmethod
    def _fail(p: _Pending, exc: BaseException) -> None:
        if not p.future.done():
            p.future.set_exception(exc)


class InferenceService:
    """The base model (loaded on first use), the adapter LRU and the running batch of one API process."""

    def __init__(self, settings: Settings, complete_fn: CompleteFn | None = None) -> None:
        self.settings = settings
        self.adapters = serving.AdapterCache(settings.adapter_cache_size)
        self._complete = complete_fn
        self._bundle: ModelBundle | None = None
        self._bundle_lock = threading.Lock()
        self._engine: ContinuousBatcher | None = None
        self._engine_lock = threading.Lock()
        self.batcher = (CompletionBatcher(self._run_batch, settings.batch_window_ms / 1000.0, settings.max_batch_size)
                        if complete_fn is not None else None)

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

    def _run_batch(self, requests: list[CompletionRequest]) -> list[list[Completion]]:
        assert self._complete is not None
        return self._complete(self.bundle(), requests)

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
        if self.batcher is not None:
            return await self.batcher.submit(request)
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

    async def start(self) -> None:
        if self.batcher is not None:
            self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)
