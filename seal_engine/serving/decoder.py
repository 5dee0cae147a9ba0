"""A decoding loop whose batch changes between steps (continuous batching).

All rows share one transformers ``DynamicCache``, left-padded so that every row's newest
token sits in the last column: a decoding step is one forward of a (rows, 1) batch with
an attention mask and per-row position ids. New rows are prefilled together in a cache
of their own, which is then padded on the left and stacked onto the running one;
finished rows are dropped from the cache (``batch_select_indices``) and the columns that
became padding for every remaining row are cut, so the cache stays as long as its
longest live row. Each row has its own adapter (a slot of :class:`ServingLora`),
sampling settings, random generator, stop strings and token budget, and hands its
tokens to a :class:`TokenSink` as they are produced. A row whose adapter has a relevance
threshold is first scored (:mod:`seal_engine.serving.relevance`) and decodes with the base
model when its prompt is not about the adapter's documents.

Not thread-safe: one thread drives a :class:`Decoder` (see :mod:`seal_engine.serving.batcher`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.core.stops import stop_index
from seal_engine.serving.lora_slots import ServingLora
from seal_engine.serving.relevance import max_gains, serves

# transformers' generate() samples with top_k=50 unless told otherwise; keep its behaviour.
SAMPLING_TOP_K = 50
# Below this a temperature is greedy decoding (its limit): dividing logits by, say, 1e-300 overflows to inf
# and the sampling probabilities to NaN.
MIN_TEMPERATURE = 1e-4


class TokenSink(Protocol):
    """Receives one row's output. Called from the decoding thread."""

    @property
    def cancelled(self) -> bool: ...

    def token(self, token_id: int) -> None: ...

    def finish(self, reason: str) -> None:
        """``stop`` (end-of-sequence or a stop string), ``length`` or ``cancelled``."""

    def fail(self, error: BaseException) -> None: ...


@dataclass
class DecodeRequest:
    # A string is tokenized with the model's control tokens recognized; token ids are used as given.
    prompt: str | Sequence[int]
    sink: TokenSink
    adapter: LoraAdapter | None = None
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None  # None: the global torch generator
    # False: the adapter serves this row whatever its relevance threshold says.
    relevance: bool = True
    # Set when the row is admitted: whether the adapter decodes it (None: no adapter was asked for).
    adapter_served: bool | None = None


@dataclass(eq=False)
class _Row:
    req: DecodeRequest
    slot: int  # -1: base model
    length: int  # real (non-padding) tokens in the cache
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)


def _pad_left(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim % t.dim()) + [n, 0]
    return F.pad(t, pad)


class Decoder:
    """Rows in flight on one model; :meth:`add` admits rows, :meth:`step` decodes one token each."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # (rows, columns) 1 for real tokens
        self.lora: ServingLora | None = None
        self._routed: tuple | None = None  # what the LoRA routing was last set for
        layers = DynamicCache(config=bundle.model.config).layers
        if any(type(layer) is not DynamicLayer for layer in layers):
            raise NotImplementedError("continuous batching needs a model with full attention only (no sliding window)")
        gen_eos = bundle.model.generation_config.eos_token_id
        eos = gen_eos if gen_eos is not None else bundle.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}

    # -- admitting rows ----------------------------------------------------------------------------
    @torch.inference_mode()
    def add(self, requests: Sequence[DecodeRequest]) -> None:
        """Prefill ``requests`` together, sample their first tokens and join them to the batch.

        On error nothing is joined (the running rows are untouched) and the error is raised.
        """
        if not requests:
            return
        tok, dev = self.bundle.tokenizer, self.bundle.device
        ids = [tok(r.prompt, add_special_tokens=False)["input_ids"] if isinstance(r.prompt, str) else list(r.prompt)
               for r in requests]
        fallback = tok.bos_token_id if tok.bos_token_id is not None else tok.pad_token_id
        ids = [i or [fallback] for i in ids]  # an empty prompt still needs one position
        width = max(len(i) for i in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=dev)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=dev)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.bundle.model.config)
        with self.bundle.lock:
            slots = self._acquire([r.adapter for r in requests])
            try:
                self._judge(requests, ids, slots)
                logits = self._forward(input_ids, mask, position_ids, cache, slots)
            except BaseException:
                if self.lora is not None:
                    for s in slots:
                        self.lora.release(s)
                raise
        rows = [_Row(r, s, len(i), self._generator(r)) for r, s, i in zip(requests, slots, ids)]
        # Sample before joining: a row that fails here must not stay in the batch without a token
        # (the next step would fail every row in flight).
        try:
            first = self._sample(rows, logits)
        except BaseException:
            if self.lora is not None:
                for s in slots:
                    self.lora.release(s)
            raise
        self._join(cache, mask, rows)
        self._advance(rows, first)

    def _acquire(self, adapters: list[LoraAdapter | None]) -> list[int]:
        """Each row's slot (-1: no adapter); loads adapters as needed (caller holds the lock)."""
        wanted = [a for a in adapters if a is not None]
        if not wanted:
            return [-1] * len(adapters)
        if self.lora is None:
            self.lora = ServingLora(self.bundle)
        got = iter(self.lora.acquire(wanted))
        return [-1 if a is None else next(got) for a in adapters]

    def _judge(self, requests: Sequence[DecodeRequest], ids: list[list[int]], slots: list[int]) -> None:
        """Rows whose adapter's relevance threshold their prompt does not pass get the base model
        (slot -1, released); every row learns whether its adapter serves it (caller holds the lock)."""
        judged = [i for i, r in enumerate(requests)
                  if slots[i] >= 0 and r.relevance and r.adapter is not None and r.adapter.relevance is not None]
        if judged:
            # The n rows of one request share a prompt: scored once.
            keys = list(dict.fromkeys((slots[i], tuple(ids[i])) for i in judged))
            with self.lora.attached():  # type: ignore[union-attr]
                gains = dict(zip(keys, max_gains(self.bundle, self.lora, keys)))  # type: ignore[arg-type]
            self._routed = None  # scoring re-routed the slots
            for i in judged:
                if not serves(requests[i].adapter.relevance, gains[(slots[i], tuple(ids[i]))]):  # type: ignore[union-attr]
                    self.lora.release(slots[i])  # type: ignore[union-attr]
                    slots[i] = -1
        for r, s in zip(requests, slots):
            r.adapter_served = None if r.adapter is None else s >= 0

    @staticmethod
    def _generator(req: DecodeRequest) -> torch.Generator | None:
        if req.temperature < MIN_TEMPERATURE or req.seed is None:
            return None
        return torch.Generator().manual_seed(req.seed % 2**63)

    def _join(self, cache: DynamicCache, mask: torch.Tensor, rows: list[_Row]) -> None:
        if self.cache is None:
            self.cache, self.mask, self.rows = cache, mask, rows
            return
        have, new = self.mask.shape[1], mask.shape[1]
        width = max(have, new)
        for old, add in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_pad_left(old.keys, width - have, 2), _pad_left(add.keys, width - new, 2)])
            old.values = torch.cat([_pad_left(old.values, width - have, 2), _pad_left(add.values, width - new, 2)])
        self.mask = torch.cat([_pad_left(self.mask, width - have, 1), _pad_left(mask, width - new, 1)])
        self.rows = self.rows + rows

    # -- decoding ----------------------------------------------------------------------------------
    def fail_all(self, error: BaseException) -> None:
        """Fail every row (after an error that leaves the batch unusable) and start empty."""
        rows, self.rows, self.cache, self.mask, self._routed = self.rows, [], None, None, None
        for row in rows:
            if self.lora is not None:
                self.lora.release(row.slot)
            row.req.sink.fail(error)

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every row (after dropping cancelled rows)."""
        self._drop([r for r in self.rows if r.req.sink.cancelled], "cancelled")
        if not self.rows:
            return
        dev = self.bundle.device
        input_ids = torch.tensor([[r.tokens[-1]] for r in self.rows], device=dev)
        position_ids = torch.tensor([[r.length] for r in self.rows], device=dev)
        mask = F.pad(self.mask, (0, 1), value=1)
        with self.bundle.lock:
            logits = self._forward(input_ids, mask, position_ids, self.cache, [r.slot for r in self.rows])
        self.mask = mask
        for r in self.rows:
            r.length += 1
        self._advance(self.rows, self._sample(self.rows, logits))

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: DynamicCache, slots: list[int]) -> torch.Tensor:
        """Last-position logits (rows, vocab); the caller holds ``bundle.lock``."""
        use_lora = self.lora is not None and any(s >= 0 for s in slots)
        if use_lora:
            # Rows or the slot layout changed: a new routing (cheap, but not free per step).
            key = tuple(slots)
            if key != self._routed:
                self.lora.route(slots)  # type: ignore[union-attr]
                self._routed = key
        with self.lora.attached() if use_lora else nullcontext():  # type: ignore[union-attr]
            out = self.bundle.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                    cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :]

    def _advance(self, rows: list[_Row], picked: list[int]) -> None:
        """Append each row's next token, hand it to its sink, and retire finished rows."""
        tok = self.bundle.tokenizer
        done: list[tuple[_Row, str]] = []
        for row, t in zip(rows, picked):
            if t in self.eos:
                done.append((row, "stop"))
                continue
            row.tokens.append(t)
            row.req.sink.token(t)
            stop = row.req.stop
            if stop and stop_index(tok.decode(row.tokens, skip_special_tokens=True), stop) != -1:
                done.append((row, "stop"))
            elif len(row.tokens) >= row.req.max_tokens:
                done.append((row, "length"))
        for row, reason in done:
            row.req.sink.finish(reason)
        self._drop([row for row, _ in done])

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        logits = logits.float()
        picked = logits.argmax(-1)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(rows):
            if r.req.temperature >= MIN_TEMPERATURE:
                groups.setdefault((r.req.temperature, r.req.top_p), []).append(i)
        for (temperature, top_p), idx in groups.items():
            # The warpers transformers' generate() applies for these settings.
            warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopKLogitsWarper(SAMPLING_TOP_K)])
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p))
            probs = warpers(None, logits[idx]).softmax(-1)  # type: ignore[arg-type]
            for j, i in enumerate(idx):
                picked[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator)[0]
        return picked.tolist()

    def _drop(self, gone: list[_Row], reason: str | None = None) -> None:
        """Remove rows from the batch (telling their sinks ``reason`` if given) and trim the cache."""
        if not gone:
            return
        for row in gone:
            if reason is not None:
                row.req.sink.finish(reason)
            if self.lora is not None:
                self.lora.release(row.slot)
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        if not keep:
            self.rows, self.cache, self.mask, self._routed = [], None, None, None
            return
        self.rows = [self.rows[i] for i in keep]
        index = torch.tensor(keep, device=self.bundle.device)
        self.cache.batch_select_indices(index)  # type: ignore[union-attr]
        self.mask = self.mask[index]  # type: ignore[index]
        # Columns that are padding for every remaining row.
        cut = int((self.mask.shape[1] - self.mask.sum(1)).min())
        if cut:
            for layer in self.cache.layers:  # type: ignore[union-attr]
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]
            self.mask = self.mask[:, cut:]
