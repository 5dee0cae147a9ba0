"""Completions for the service: requests that may each name an adapter, and an LRU of adapters.

The service (OpenAI-compatible endpoints) calls only :func:`complete` and
:func:`stream_completion`; how rows are batched across adapters is this module's job.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TextIteratorStreamer

from .generation import generate
from .lora import LoraAdapter, load_adapter
from .model import ModelBundle
from .multilora import serving


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
    text = raw
    stopped = False
    for s in req.stop:
        i = text.find(s)
        if i != -1:
            text, stopped = text[:i], True
    n_tokens = count_tokens(bundle, raw)
    reason = "stop" if stopped or n_tokens < req.max_tokens else "length"
    return Completion(text, reason, count_tokens(bundle, req.prompt), min(n_tokens, req.max_tokens))


def complete(bundle: ModelBundle, requests: Sequence[CompletionRequest]) -> list[list[Completion]]:
    """``n`` completions per request.

    Requests with the same sampling settings run as one batch whatever adapters they
    name: each row carries its own adapter (multi-LoRA), one forward per decoding step.
    """
    groups: dict[tuple, list[tuple[int, CompletionRequest]]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.max_tokens, r.temperature, r.top_p, r.seed), []).append((i, r))
    results: list[list[Completion]] = [[] for _ in requests]
    for (max_tokens, temperature, top_p, seed), items in groups.items():
        prompts = [r.prompt for _, r in items for _ in range(r.n)]
        adapters = [r.adapter for _, r in items for _ in range(r.n)]
        raw = generate(
            bundle, prompts, max_new_tokens=max_tokens, temperature=temperature, top_p=top_p,
            seed=seed, batch_size=len(prompts), adapters=adapters,
        )
        pos = 0
        for i, r in items:
            results[i] = [_finish(bundle, raw[pos + j], r) for j in range(r.n)]
            pos += r.n
    return results


def stream_completion(bundle: ModelBundle, request: CompletionRequest) -> Iterator[str]:
    """Text deltas of one completion as they are decoded (stop strings honoured)."""
    tok = bundle.tokenizer
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    enc = tok([request.prompt], return_tensors="pt", add_special_tokens=False).to(bundle.device)
    kwargs: dict = dict(max_new_tokens=request.max_tokens, pad_token_id=tok.pad_token_id, streamer=streamer)
    if request.temperature > 0:
        kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            adapters = [request.adapter] if request.adapter is not None else []
            with serving(bundle, adapters) as ml, torch.inference_mode():
                ml.route([0] if adapters else None)
                if request.seed is not None:
                    torch.manual_seed(request.seed)
                bundle.model.generate(**enc, **kwargs)
        except BaseException as e:  # surfaced to the consumer below
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    emitted = ""
    held = ""
    for delta in streamer:
        held += delta
        text = emitted + held
        cut = min((text.find(s) for s in request.stop if s in text), default=-1)
        if cut != -1:
            if cut > len(emitted):
                yield text[len(emitted) : cut]
            break
        # Hold back a tail that could be the start of a stop string.
        keep = max((len(s) - 1 for s in request.stop), default=0)
        safe = len(held) - keep if keep else len(held)
        if safe > 0:
            yield held[:safe]
            emitted += held[:safe]
            held = held[safe:]
    else:
        if held:
            yield held
    thread.join()
    if errors:
        raise errors[0]


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
