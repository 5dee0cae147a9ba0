"""Completions for the service: requests that may each name an adapter, and an LRU of adapters.

The service (OpenAI-compatible endpoints) calls only this module. Every completion is
decoded by :class:`~seal_engine.serving.decoder.Decoder`, where rows with any mix of adapters
and sampling settings share each step: :func:`complete` runs its requests to the end in
the calling thread; a long-lived :class:`~seal_engine.serving.batcher.ContinuousBatcher`
(``engine``) lets requests join between steps (:func:`submit`, :func:`stream_completion`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TextIteratorStreamer

from seal_engine.core.lora import LoraAdapter, load_adapter
from seal_engine.core.model import ModelBundle
from seal_engine.core.stops import truncate_at_stop, until_stop
from seal_engine.serving.batcher import ContinuousBatcher
from seal_engine.serving.decoder import Decoder, DecodeRequest, TokenSink


@dataclass
class CompletionRequest:
    prompt: str
    adapter: LoraAdapter | None = None
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    n: int = 1
    seed: int | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


def chat_prompt(bundle: ModelBundle, messages: Sequence[dict[str, str]]) -> str:
    """Render OpenAI-style messages with the model's chat template (or plainly for base models)."""
    if bundle.tokenizer.chat_template:
        return bundle.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def count_tokens(bundle: ModelBundle, text: str) -> int:
    return len(bundle.tokenizer(text, add_special_tokens=False)["input_ids"])


def _finish(bundle: ModelBundle, raw: str, req: CompletionRequest) -> Completion:
    text, stopped = truncate_at_stop(raw, req.stop)
    n_tokens = count_tokens(bundle, raw)
    reason = "stop" if stopped or n_tokens < req.max_tokens else "length"
    return Completion(text, reason, count_tokens(bundle, req.prompt), min(n_tokens, req.max_tokens))


class _Collect:
    """Token sink that keeps a row's tokens for a whole completion."""

    def __init__(self, on_done: Callable[[], None]) -> None:
        self.tokens: list[int] = []
        self.error: BaseException | None = None
        self.cancelled = False
        self._on_done = on_done

    def token(self, token_id: int) -> None:
        self.tokens.append(token_id)

    def finish(self, reason: str) -> None:
        self._on_done()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._on_done()


class _Stream:
    """Token sink that turns a row's tokens into text deltas (transformers' streamer: whole words)."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.streamer = TextIteratorStreamer(bundle.tokenizer, skip_special_tokens=True)
        self.error: BaseException | None = None
        self.cancelled = False

    def token(self, token_id: int) -> None:
        self.streamer.put(torch.tensor([token_id]))

    def finish(self, reason: str) -> None:
        self.streamer.end()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.streamer.end()


def _row_seed(seed: int | None, choice: int) -> int | None:
    # Choices of one seeded request differ from each other, and each is reproducible.
    return None if seed is None else seed + 1_000_003 * choice


def _rows(request: CompletionRequest, sinks: Sequence[TokenSink], first_choice: int = 0) -> list[DecodeRequest]:
    return [
        DecodeRequest(prompt=request.prompt, sink=sink, adapter=request.adapter, max_tokens=request.max_tokens,
                      temperature=request.temperature, top_p=request.top_p, stop=tuple(request.stop),
                      seed=_row_seed(request.seed, first_choice + j))
        for j, sink in enumerate(sinks)
    ]


def _completion(bundle: ModelBundle, request: CompletionRequest, sink: _Collect) -> Completion:
    if sink.error is not None:
        raise sink.error
    return _finish(bundle, bundle.tokenizer.decode(sink.tokens, skip_special_tokens=True), request)


def complete(bundle: ModelBundle, requests: Sequence[CompletionRequest]) -> list[list[Completion]]:
    """``n`` completions per request, all decoded as one batch in the calling thread.

    Each row carries its own adapter (multi-LoRA) and sampling settings; rows leave the
    batch as they finish.
    """
    sinks = [[_Collect(lambda: None) for _ in range(r.n)] for r in requests]
    decoder = Decoder(bundle)
    decoder.add([row for r, ss in zip(requests, sinks) for row in _rows(r, ss)])
    while decoder.rows:
        decoder.step()
    return [[_completion(bundle, r, s) for s in ss] for r, ss in zip(requests, sinks)]


def submit(engine: ContinuousBatcher, request: CompletionRequest) -> Future[list[Completion]]:
    """Queue a request's ``n`` rows on the running batch; the future resolves when all are done.

    Cancelling the future takes its rows out of the batch at the next step.
    """
    bundle = engine.decoder.bundle
    future: Future[list[Completion]] = Future()
    left = [request.n]
    lock = threading.Lock()

    def done() -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        try:
            result = [_completion(bundle, request, s) for s in sinks]
        except BaseException as e:  # handed to the waiter
            _resolve(future, error=e)
        else:
            _resolve(future, result=result)

    sinks = [_Collect(done) for _ in range(request.n)]

    def cancelled(f: Future) -> None:
        if f.cancelled():
            for s in sinks:
                s.cancelled = True

    future.add_done_callback(cancelled)
    engine.submit(_rows(request, sinks))
    return future


def _resolve(future: Future, result: object = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:  # cancelled meanwhile
        pass


def stream_completion(bundle: ModelBundle, request: CompletionRequest,
                      engine: ContinuousBatcher | None = None, choice: int = 0) -> Iterator[str]:
    """Text deltas of one completion as they are decoded (stop strings honoured).

    With ``engine`` the row joins its running batch; without, it is decoded alone.
    ``choice``: which of the request's n choices this is (its seed, as in :func:`complete`).
    Closing the iterator early takes the row out of the batch.
    """
    sink = _Stream(bundle)
    own = engine is None
    runner = ContinuousBatcher(bundle, max_rows=1) if engine is None else engine
    runner.submit(_rows(request, [sink], first_choice=choice))
    try:
        yield from until_stop(sink.streamer, request.stop)
        if sink.error is not None:
            raise sink.error
    finally:
        sink.cancelled = True  # no-op once the row has finished
        if own:
            runner.close()


class AdapterCache:
    """LRU of adapters loaded from disk, keyed by directory. Thread-safe."""

    def __init__(self, max_items: int = 8) -> None:
        self.max_items = max(1, max_items)
        self._items: OrderedDict[str, LoraAdapter] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, directory: str | Path) -> LoraAdapter:
        key = str(Path(directory).resolve())
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        adapter = load_adapter(key)
        with self._lock:
            self._items[key] = adapter
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return adapter

    def evict(self, directory: str | Path) -> None:
        with self._lock:
            self._items.pop(str(Path(directory).resolve()), None)

    def __contains__(self, directory: object) -> bool:
        return str(Path(str(directory)).resolve()) in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def num_bytes(self) -> int:
        with self._lock:
            return sum(a.num_bytes for a in self._items.values())
