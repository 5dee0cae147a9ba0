"""Batched text generation with the shared base model (optionally under an adapter)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .model import ModelBundle


def _stop_truncate(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut]


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
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Completions for ``prompts``, in order. Greedy when temperature is 0.

    ``model`` overrides the bundle's model (e.g. a PEFT-wrapped one); the caller holds
    ``bundle.lock`` when it does.
    """
    tok = bundle.tokenizer
    net = model if model is not None else bundle.model
    if seed is not None:
        torch.manual_seed(seed)
    do_sample = temperature > 0
    kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=tok.pad_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    outs: list[str] = []
    with bundle.lock:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start : start + batch_size])
            enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(bundle.device)
            gen = net.generate(**enc, **kwargs)
            new = gen[:, enc["input_ids"].shape[1] :]
            texts = tok.batch_decode(new, skip_special_tokens=True)
            outs.extend(_stop_truncate(t, stop) for t in texts)
            if on_batch:
                on_batch(len(batch))
    return outs
