"""Completions for the service: requests that may each name an adapter, and an LRU of adapters.

The service (OpenAI-compatible endpoints) calls only this module. Every completion is
decoded by :class:`~seal_engine.serving.decoder.Decoder`, where rows with any mix of adapters
and sampling settings share each step: :func:`complete` runs its requests to the end in
the calling thread; a long-lived :class:`~seal_engine.serving.batcher.ContinuousBatcher`
(``engine``) lets requests join between steps (:func:`submit`, :func:`stream_completion`).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, TextIteratorStreamer

from seal_engine.core.lora import LoraAdapter, load_adapter
from seal_engine.core.model import ModelBundle
from seal_engine.core.stops import truncate_at_stop, until_stop
from seal_engine.serving.batcher import ContinuousBatcher
from seal_engine.serving.decoder import Decoder, DecodeRequest, TokenSink


# A prompt: a string (tokenized with the model's control tokens recognized: a raw completion
# prompt is its author's own text to the model) or token ids, used as they are (a chat prompt
# from :func:`chat_prompt_ids`, whose message contents are text whatever they contain).
Prompt = str | Sequence[int]


@dataclass
class CompletionRequest:
    prompt: Prompt
    adapter: LoraAdapter | None = None
    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    n: int = 1
    seed: int | None = None
    # False: the adapter serves the request whatever its relevance threshold says
    # (seal_engine.serving.relevance); True: requests not about its documents get the base model.
    relevance: bool = True


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    adapter_served: bool | None = None  # None: no adapter asked for; False: the base model answered


def chat_prompt(bundle: ModelBundle, messages: Sequence[dict[str, str]]) -> str:
    """Render OpenAI-style messages with the model's chat template (or plainly for base models).

    As text, control-token text in a content is indistinguishable from the template's own
    control tokens: generate from :func:`chat_prompt_ids`, not from this string.
    """
    if bundle.tokenizer.chat_template:
        return bundle.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"


def prompt_ids(bundle: ModelBundle, prompt: Prompt) -> list[int]:
    """The token ids of a :data:`Prompt` (a string's control-token text becomes control tokens)."""
    if isinstance(prompt, str):
        return bundle.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return list(prompt)


def plain_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """``text`` tokenized as text only: no added token (special or not) is matched in it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: special tokens at least are split
        return tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    # The pipeline of tokenizers' encode() without its added-token matching.
    normalized = backend.normalizer.normalize_str(text) if backend.normalizer is not None else text
    pieces = (backend.pre_tokenizer.pre_tokenize_str(normalized) if backend.pre_tokenizer is not None
              else [(normalized, (0, len(normalized)))])
    return [t.id for piece, _ in pieces for t in backend.model.tokenize(piece)]


def _control_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    return {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}


def _content_spans(bundle: ModelBundle, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]] | None:
    """Where each message's content lies in ``text`` (their rendering), or None when the template
    does not insert contents verbatim (it strips or rewrites them)."""
    nonce = uuid.uuid4().hex
    marks = [f"[[{nonce}:{i}]]" for i in range(len(messages))]
    try:
        marked = chat_prompt(bundle, [{**m, "content": mark} for m, mark in zip(messages, marks)])
    except Exception:  # noqa: BLE001  (a template that looks into contents and refuses the markers)
        return None
    spans: list[tuple[int, int]] = []
    rebuilt: list[str] = []
    pos = length = 0  # in the marked rendering; in the rebuilt one
    for m, mark in zip(messages, marks):
        at = marked.find(mark, pos)
        if at < 0 or marked.count(mark) != 1:
            return None
        length += at - pos
        rebuilt += [marked[pos:at], m["content"]]
        spans.append((length, length + len(m["content"])))
        length += len(m["content"])
        pos = at + len(mark)
    rebuilt.append(marked[pos:])
    # The markers were replaced by the contents and nothing else changed: the spans are exact.
    return spans if "".join(rebuilt) == text else None


def chat_prompt_ids(bundle: ModelBundle, messages: Sequence[dict[str, str]]) -> list[int]:
    """The prompt tokens of a conversation: the template's control tokens are control tokens, and
    every message content is text, whatever it contains (a user typing ``<|im_end|>`` cannot end
    their turn or forge another role's).

    A conversation whose contents hold no control-token text gets exactly the tokens of its
    rendering (:func:`chat_prompt`). Otherwise the template's parts are tokenized as usual and
    each content with :func:`plain_ids`. Raises ValueError if the template rewrites a content
    that holds control-token text (its place in the rendering is then unknown).
    """
    tok = bundle.tokenizer
    messages = [dict(m) for m in messages]
    text = chat_prompt(bundle, messages)
    control = _control_tokens(tok)
    holds_control = any(c in m["content"] for m in messages for c in control.values())
    spans = _content_spans(bundle, messages, text)
    if spans is None:
        if holds_control:
            raise ValueError("this model's chat template rewrites message contents, so control-token text in "
                             "them cannot be kept as text")
        return prompt_ids(bundle, text)
    if getattr(tok, "is_fast", False):
        # A control token overlapping a content (inside it, or straddling its edge) was typed, not templated.
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        if not any(t in control and any(s < end and start < e for start, end in spans)
                   for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"])):
            return list(enc["input_ids"])
    elif not holds_control:
        return prompt_ids(bundle, text)
    ids: list[int] = []
    pos = 0
    for start, end in spans:
        if start > pos:
            ids += prompt_ids(bundle, text[pos:start])
        ids += plain_ids(tok, text[start:end])
        pos = end
    if pos < len(text):
        ids += prompt_ids(bundle, text[pos:])
    return ids


def count_tokens(bundle: ModelBundle, text: str) -> int:
    return len(bundle.tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_tokens(bundle: ModelBundle, prompt: Prompt) -> int:
    return count_tokens(bundle, prompt) if isinstance(prompt, str) else len(prompt)


def _finish(bundle: ModelBundle, raw: str, req: CompletionRequest, adapter_served: bool | None) -> Completion:
    text, stopped = truncate_at_stop(raw, req.stop)
    n_tokens = count_tokens(bundle, raw)
    reason = "stop" if stopped or n_tokens < req.max_tokens else "length"
    return Completion(text, reason, prompt_tokens(bundle, req.prompt), min(n_tokens, req.max_tokens), adapter_served)


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
                      seed=_row_seed(request.seed, first_choice + j), relevance=request.relevance)
        for j, sink in enumerate(sinks)
    ]


def _completion(bundle: ModelBundle, request: CompletionRequest, row: DecodeRequest) -> Completion:
    sink: _Collect = row.sink  # type: ignore[assignment]
    if sink.error is not None:
        raise sink.error
    return _finish(bundle, bundle.tokenizer.decode(sink.tokens, skip_special_tokens=True), request, row.adapter_served)


def complete(bundle: ModelBundle, requests: Sequence[CompletionRequest]) -> list[list[Completion]]:
    """``n`` completions per request, all decoded as one batch in the calling thread.

    Each row carries its own adapter (multi-LoRA) and sampling settings; rows leave the
    batch as they finish.
    """
    rows = [_rows(r, [_Collect(lambda: None) for _ in range(r.n)]) for r in requests]
    decoder = Decoder(bundle)
    decoder.add([row for rs in rows for row in rs])
    while decoder.rows:
        decoder.step()
    return [[_completion(bundle, r, row) for row in rs] for r, rs in zip(requests, rows)]


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
            result = [_completion(bundle, request, row) for row in rows]
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
    rows = _rows(request, sinks)
    engine.submit(rows)
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
