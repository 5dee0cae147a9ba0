"""Batched text generation with the shared base model (optionally under an adapter)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.core.stops import truncate_at_stop
from seal_engine.serving.lora_slots import distinct_slots, serving


@torch.inference_mode()
def generate(
    bundle: ModelBundle,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    batch_size: int = 32,
    stop: Sequence[str] = (),
    model: torch.nn.Module | None = None,
    adapters: Sequence[LoraAdapter | None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    allowed_tokens: Callable[[int, torch.Tensor], list[int]] | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Completions for ``prompts``, in order. Greedy when temperature is 0.

    ``on_token(done, total)`` is called after every decoding step, counted over all batches
    (``total`` = batches x ``max_new_tokens``): progress that moves while a batch decodes.

    ``allowed_tokens`` constrains decoding (transformers' ``prefix_allowed_tokens_fn``).

    ``adapters`` gives each prompt its own adapter (None: the base model); rows with
    different adapters share every batch. ``model`` overrides the bundle's model
    (e.g. a PEFT-wrapped one); the caller holds ``bundle.lock`` when it does.
    """
    if adapters is not None and any(a is not None for a in adapters):
        if len(adapters) != len(prompts):
            raise ValueError("one adapter (or None) per prompt")
        unique, slot_of = distinct_slots(adapters)
        with serving(bundle, unique) as ml:

            def route(start: int, n: int) -> None:
                ml.route(slot_of[start : start + n])

            return _generate(
                bundle, prompts, bundle.model, max_new_tokens, temperature, top_p, seed, batch_size, stop, on_batch, route,
                allowed_tokens, on_token,
            )
    net = model if model is not None else bundle.model
    return _generate(
        bundle, prompts, net, max_new_tokens, temperature, top_p, seed, batch_size, stop, on_batch, None, allowed_tokens,
        on_token,
    )


class _StepCounter:
    """A stopping criterion that never stops: it counts decoding steps for ``on_token``."""

    def __init__(self, on_token: Callable[[int, int], None], total: int) -> None:
        self.on_token, self.total, self.done = on_token, total, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: object) -> torch.Tensor:
        self.done += 1
        self.on_token(min(self.done, self.total), self.total)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _generate(
    bundle: ModelBundle,
    prompts: Sequence[str],
    net: torch.nn.Module,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    batch_size: int,
    stop: Sequence[str],
    on_batch: Callable[[int], None] | None,
    route: Callable[[int, int], None] | None,
    allowed_tokens: Callable[[int, torch.Tensor], list[int]] | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[str]:
    from transformers import StoppingCriteriaList

    tok = bundle.tokenizer
    if seed is not None:
        torch.manual_seed(seed)
    do_sample = temperature > 0
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if allowed_tokens is not None:
        kwargs["prefix_allowed_tokens_fn"] = allowed_tokens
    counter = None
    if on_token is not None:
        counter = _StepCounter(on_token, -(-len(prompts) // batch_size) * max_new_tokens)
        kwargs["stopping_criteria"] = StoppingCriteriaList([counter])
    outs: list[str] = []
    with bundle.lock:
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            batch = list(prompts[start : start + batch_size])
            if route is not None:
                route(start, len(batch))
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(bundle.device)
            gen = net.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1] :]
            texts = tok.batch_decode(new, skip_special_tokens=True)
            outs.extend(truncate_at_stop(t, stop)[0] for t in texts)
            if counter is not None:  # a batch that ended early counts its unused steps as done
                counter.done = (b + 1) * max_new_tokens
                on_token(counter.done, counter.total)
            if on_batch:
                on_batch(len(batch))
    return outs
