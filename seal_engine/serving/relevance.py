"""Per-request relevance: an adapter serves the requests about its documents, the base model the rest.

An adapter trained on a document forgets some general knowledge (BENCHMARKS.md, issue 13), and no
training recipe found removes that without removing what it learned. But a request shows whether it
is about the adapter's documents: a question about them carries a name or term the adapter has
learned, whose negative log-likelihood under the adapter falls far below the base model's. The
feature is the **largest per-token gain** (base NLL - adapter NLL) over the prompt's tokens,
teacher-forced (one forward each, no decoding); the mean gain separates poorly (the adapter's drift
on ordinary text hides the few learned tokens).

Each adapter gets its own threshold, calibrated when it is made: a quantile of the gains of general
requests (the *gate* half of the forgetting probes and generic prompts, rendered as chat requests).
A request over the threshold decodes with the adapter; the rest with the base model. The
:class:`~seal_engine.serving.decoder.Decoder` applies it to every request whose adapter has a
:class:`~seal_engine.core.lora.Relevance` (unless the request opts out).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from seal_engine.core.lora import LoraAdapter, Relevance
from seal_engine.core.model import ModelBundle
from seal_engine.serving.lora_slots import ServingLora, serving
from seal_engine.serving.scoring import token_nlls
from seal_engine.training.sft import IGNORE

# The prompt tokens scored: the last ones (a conversation's newest turn is at its end); bounds the
# scoring forward's logits (rows x window x vocabulary) for long prompts.
WINDOW = 256
# A request passes its adapter's threshold by more than rounding: the same prompt scored in another
# batch arrangement moves its gain by ~1e-5, and a gain that sits on the threshold must not flip.
MARGIN = 1e-3

_template_prefixes: dict[tuple, tuple[int, ...]] = {}


def template_prefix(bundle: ModelBundle) -> tuple[int, ...]:
    """The tokens every chat request starts with (the template's opening, for many models a default
    system prompt): the same for every request, so they say nothing about one and are not scored.
    Empty for a model without a chat template."""
    key = (bundle.model_id, id(bundle))
    if key not in _template_prefixes:
        tok = bundle.tokenizer
        prefix: tuple[int, ...] = ()
        if tok.chat_template:
            a, b = ([*tok(tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                                   add_generation_prompt=True), add_special_tokens=False)["input_ids"]]
                    for c in ("alpha", "omega"))
            prefix = tuple(a[: _common_prefix([a, b])])
        _template_prefixes[key] = prefix
    return _template_prefixes[key]


def _unscored(prefix: tuple[int, ...], ids: Sequence[int]) -> int:
    """How many leading NLLs of a windowed prompt are not part of its feature (the template prefix)."""
    n = len(prefix)
    return max(0, n - 1) if n and len(ids) > n and tuple(ids[:n]) == prefix else 0


def _gain(prefix: tuple[int, ...], ids: Sequence[int], mine: torch.Tensor, base: torch.Tensor) -> float:
    skip = _unscored(prefix, list(ids)[-WINDOW:])
    diff = (base - mine)[skip:]
    return float(diff.max()) if len(diff) else 0.0


def _rows(slot: int, ids: Sequence[int]) -> tuple[int, list[int], list[int]]:
    ids = list(ids)[-WINDOW:]
    return slot, ids, [IGNORE] + ids[1:]


def max_gains(bundle: ModelBundle, lora: ServingLora, prompts: Sequence[tuple[int, Sequence[int]]], *,
              base: Sequence[torch.Tensor] | None = None, batch_size: int = 16) -> list[float]:
    """Per (adapter slot, prompt ids): the largest per-token NLL gain of the adapter over the base
    model on the prompt's last :data:`WINDOW` tokens, the chat template's opening left out
    (:func:`template_prefix`; 0.0 for a prompt with nothing else). ``base``:
    the prompts' base-model token NLLs when known (:func:`base_nlls`), else computed beside."""
    if base is None:
        nlls = token_nlls(bundle, lora, [r for slot, ids in prompts for r in (_rows(slot, ids), _rows(-1, ids))],
                          batch_size=batch_size)
        mine, base = nlls[0::2], nlls[1::2]
    else:
        mine = token_nlls(bundle, lora, [_rows(slot, ids) for slot, ids in prompts], batch_size=batch_size)
    prefix = template_prefix(bundle)
    return [_gain(prefix, ids, m, b) for (_, ids), m, b in zip(prompts, mine, base)]


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every sequence shares."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(x) for x in seqs)
    for x in seqs[1:]:
        n = next((i for i, (a, b) in enumerate(zip(first[:n], x)) if a != b), n)
    return n


def _prefix_length(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt starts with (a chat template's system part), leaving each at least one."""
    return max(0, min(_common_prefix(prompts), min((len(p) for p in prompts), default=1) - 1))


@torch.inference_mode()
def shared_prefix_nlls(bundle: ModelBundle, lora: ServingLora | None, slot: int, prompts: Sequence[Sequence[int]],
                       *, batch_size: int = 16) -> list[torch.Tensor]:
    """Token NLLs of ``prompts`` (positions 1.., as :func:`max_gains` scores them) under one slot,
    the prefix they all share computed once and its cache reused: calibration prompts are chat
    requests whose template part (for many models a system prompt) is most of their tokens."""
    prompts = [list(p)[-WINDOW:] for p in prompts]
    n = _prefix_length(prompts)
    if n < 2:
        return token_nlls(bundle, lora, [_rows(slot, p) for p in prompts], batch_size=batch_size)
    dev, model = bundle.device, bundle.model
    pad = bundle.tokenizer.pad_token_id if bundle.tokenizer.pad_token_id is not None else 0
    prefix = torch.tensor([prompts[0][:n]], device=dev)
    if lora is not None:
        lora.route([slot])
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=prefix, cache=cache, use_cache=True).logits[0].float()
    head = F.cross_entropy(logits[:-1], prefix[0, 1:], reduction="none").cpu()
    last = logits[-1:]  # predicts each prompt's first token after the prefix
    out: list[torch.Tensor | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        tails = [prompts[i][n:] for i in chunk]
        width = max(len(t) for t in tails)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long, device=dev)
        mask = torch.zeros((len(chunk), n + width), dtype=torch.long, device=dev)
        mask[:, :n] = 1
        for j, t in enumerate(tails):
            ids[j, : len(t)] = torch.tensor(t, device=dev)
            mask[j, n : n + len(t)] = 1
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(len(chunk))
        if lora is not None:
            lora.route([slot] * len(chunk))
        position_ids = torch.arange(n, n + width, device=dev).expand(len(chunk), -1)
        tail_logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=rows,
                            use_cache=True).logits.float()
        # Position k of a tail is predicted by the logits of position k - 1 (the prefix's last for k = 0).
        pred = torch.cat([last.expand(len(chunk), 1, -1), tail_logits[:, :-1]], dim=1)
        nll = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), ids.reshape(-1), reduction="none")
        nll = nll.view(len(chunk), width).cpu()
        for j, (i, t) in enumerate(zip(chunk, tails)):
            out[i] = torch.cat([head, nll[j, : len(t)]])
    if lora is not None:
        lora.route(None)
    return out  # type: ignore[return-value]


_base_cache: dict[tuple, list[torch.Tensor]] = {}


def base_nlls(bundle: ModelBundle, prompts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """The base model's token NLLs of ``prompts`` as :func:`max_gains` scores them; cached per model
    and prompt set (the calibration prompts are the same for every adapter)."""
    key = (bundle.model_id, id(bundle), tuple(tuple(p[-WINDOW:]) for p in prompts))
    if key not in _base_cache:
        with bundle.lock:
            _base_cache[key] = shared_prefix_nlls(bundle, None, -1, prompts)
    return _base_cache[key]


def adapter_gains(bundle: ModelBundle, adapter: LoraAdapter, prompts: Sequence[Sequence[int]], *,
                  cache_base: bool = False) -> list[float]:
    """:func:`max_gains` of one adapter for ``prompts`` (token ids, as the decoder gets them), the
    prompts' shared prefix computed once; ``cache_base`` keeps the base side for the next call
    with the same prompts."""
    if not prompts:
        return []
    base = base_nlls(bundle, prompts) if cache_base else None
    with serving(bundle, [adapter]) as lora:
        mine = shared_prefix_nlls(bundle, lora, 0, prompts)
        if base is None:
            base = shared_prefix_nlls(bundle, lora, -1, prompts)
    prefix = template_prefix(bundle)
    return [_gain(prefix, ids, m, b) for ids, m, b in zip(prompts, mine, base)]


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, int(q * (len(xs) - 1) + 0.5)))]


@torch.inference_mode()
def calibrate(bundle: ModelBundle, adapter: LoraAdapter, prompts: Sequence[Sequence[int]], q: float) -> Relevance:
    """The adapter's threshold: the ``q`` quantile of its gains on ``prompts`` (general requests:
    about ``1 - q`` of such requests still get the adapter)."""
    if not prompts:
        raise ValueError("calibrating relevance needs general prompts")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"relevance quantile must be within [0, 1]; got {q}")
    gains = adapter_gains(bundle, adapter, prompts, cache_base=True)
    return Relevance(threshold=quantile(gains, q), quantile=q, texts=len(prompts))


def serves(relevance: Relevance | None, gain: float) -> bool:
    """Whether an adapter with ``relevance`` serves a request of this gain (no relevance: always)."""
    return relevance is None or gain > relevance.threshold + MARGIN
