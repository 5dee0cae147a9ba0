"""The reference LoRA inner loop through PEFT: tokenize, batch, train one adapter.

The batched path (K adapters in one forward pass) is :mod:`seal_engine.training.batched`;
both give an adapter as data (:class:`seal_engine.core.lora.TrainedAdapter`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

from seal_engine.config import LoraSettings
from seal_engine.core.lora import AdapterError, TrainedAdapter, lora_config, peft_model
from seal_engine.core.model import ModelBundle

T = TypeVar("T")


def tokenize(bundle: ModelBundle, sequences: Sequence[str], max_len: int) -> list[list[int]]:
    ids = bundle.tokenizer(list(sequences), add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    return [x for x in ids if len(x) > 1]


# Batch widths are rounded up to a multiple of this. On CPUs with AMX, bf16 kernels
# for widths off this grid are generated on first use (~15 s per new shape, measured),
# which dwarfs the few padding tokens this costs.
PAD_MULTIPLE = 32


def padded_width(longest: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-longest // multiple) * multiple


def collate(batch: Sequence[Sequence[int]], pad_id: int, multiple: int = PAD_MULTIPLE) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding positions get label -100 so they carry no loss."""
    width = padded_width(max(len(x) for x in batch), multiple)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        input_ids[i, : len(x)] = torch.tensor(x)
        attention[i, : len(x)] = 1
    labels = input_ids.masked_fill(attention == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def train_lora(
    bundle: ModelBundle,
    sequences: Sequence[str],
    cfg: LoraSettings,
    *,
    seed: int | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainedAdapter:
    """Train a fresh LoRA adapter on ``sequences`` (loss on every real token).

    Deterministic for a given seed on a given machine: the seed fixes the LoRA
    initialisation and the data order.
    """
    seed = cfg.seed if seed is None else seed
    data = tokenize(bundle, sequences, cfg.max_seq_length)
    if not data:
        raise AdapterError("nothing to train on: every sequence is empty")
    pad = bundle.tokenizer.pad_token_id
    return run_peft_training(
        bundle, lora_config(cfg, bundle.model_id, bundle), data, lambda rows: collate(rows, pad),
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, seed=seed, on_step=on_step,
    )


def labelled_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens (labels != -100), as transformers
    computes it, but with logits only at the positions that predict a labelled token.

    The vocabulary projection and its float32 logits dominate memory when the loss covers a
    small part of long sequences (few-shot training on answers only: an ARC episode of 4k
    tokens x batch 4 needs ~3 GB of logits); only the labelled columns are computed here.
    """
    target = batch["labels"][:, 1:]
    keep = (target != -100).any(0).nonzero().squeeze(1)  # positions whose next token carries loss
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False,
                logits_to_keep=keep)
    logits = out.logits.float()
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), target[:, keep].reshape(-1), ignore_index=-100
    )


def run_peft_training(
    bundle: ModelBundle,
    config: LoraConfig,
    examples: Sequence[T],
    collate_fn: Callable[[list[T]], dict[str, torch.Tensor]],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    init_state: dict[str, torch.Tensor] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainedAdapter:
    """The PEFT training loop shared by the inner loop and policy SFT.

    The seed fixes the LoRA initialisation and the per-epoch shuffles; ``init_state``
    continues from existing LoRA weights instead. Loss is on labels != -100.
    """
    total = -(-len(examples) // batch_size) * epochs
    order_rng = random.Random(seed)
    losses: list[float] = []
    tokens = 0
    t0 = time.perf_counter()
    with bundle.lock:
        torch.manual_seed(seed)
        model = peft_model(bundle, config)
        try:
            if init_state is not None:
                res = set_peft_model_state_dict(model, init_state)
                if res.unexpected_keys:
                    raise AdapterError(f"starting adapter does not fit {bundle.model_id}")
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
            step = 0
            for _ in range(epochs):
                idx = list(range(len(examples)))
                order_rng.shuffle(idx)
                for b in range(0, len(idx), batch_size):
                    batch = collate_fn([examples[i] for i in idx[b : b + batch_size]])
                    batch = {k: v.to(bundle.device) for k, v in batch.items()}
                    loss = labelled_loss(model, batch)
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    step += 1
                    tokens += int((batch["labels"] != -100).sum())
                    losses.append(loss.item())
                    if on_step:
                        on_step(step, total, losses[-1])
            state = {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
        finally:
            model.eval()
            model.unload()
    return TrainedAdapter(
        config=config,
        state=state,
        seed=seed,
        losses=losses,
        num_sequences=len(examples),
        num_tokens=tokens,
        seconds=time.perf_counter() - t0,
    )
