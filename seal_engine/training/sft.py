"""Supervised fine-tuning of the self-edit policy: (prompt -> completion), loss on the completion.

The policy is a LoRA on the base model (PEFT format). Prompt tokens and padding carry
label -100, so only the completion (plus a closing EOS) is learned. Training can start
from an earlier policy adapter ("stack": the previous iteration's LoRA keeps training)
or from a fresh, seeded LoRA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from seal_engine.config import SFTSettings
from seal_engine.core.lora import AdapterError, LoraAdapter, TrainedAdapter, lora_config
from seal_engine.core.model import ModelBundle
from seal_engine.training.peft import padded_width, run_peft_training

IGNORE = -100


def build_example(bundle: ModelBundle, prompt: str, completion: str, max_len: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) for one pair; None when no completion token fits in ``max_len``.

    The prompt is tokenized as generation sees it (no special tokens added), the
    completion follows it and ends with EOS. A prompt too long is cut from the left.
    """
    tok = bundle.tokenizer
    p = tok(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c = tok(completion, add_special_tokens=False)["input_ids"]
    if tok.eos_token_id is not None:
        c = c + [tok.eos_token_id]
    if not c:
        return None
    c = c[:max_len]
    room = max_len - len(c)
    p = p[-room:] if room > 0 else []
    if not p and not c:
        return None
    return p + c, [IGNORE] * len(p) + c


def collate_sft(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = padded_width(max(len(ids) for ids, _ in examples))
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def completion_loss(bundle: ModelBundle, pairs: Sequence[tuple[str, str]], adapter: LoraAdapter | None,
                    max_len: int = 1024) -> float:
    """Mean per-token loss on the completions (for checks and metrics)."""
    from seal_engine.core.lora import applied_adapter

    examples = [e for e in (build_example(bundle, p, c, max_len) for p, c in pairs) if e]
    with applied_adapter(bundle, adapter) as model, torch.inference_mode():
        batch = {k: v.to(bundle.device) for k, v in collate_sft(examples, bundle.tokenizer.pad_token_id).items()}
        return float(model(**batch).loss)


def train_sft(
    bundle: ModelBundle,
    pairs: Sequence[tuple[str, str]],
    cfg: SFTSettings,
    *,
    init: LoraAdapter | None = None,
    seed: int | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainedAdapter:
    """A policy adapter fine-tuned on ``pairs`` (prompt, completion).

    With ``init``, training continues from that adapter (its config is kept); else a
    fresh LoRA with ``cfg``'s shape is seeded. Deterministic for a seed on a machine.
    """
    seed = cfg.seed if seed is None else seed
    examples = [e for e in (build_example(bundle, p, c, cfg.max_seq_length) for p, c in pairs) if e]
    if not examples:
        raise AdapterError("nothing to fine-tune the policy on (no completion tokens)")
    config = init.config if init is not None else lora_config(cfg.as_lora(), bundle.model_id, bundle)
    pad = bundle.tokenizer.pad_token_id
    return run_peft_training(
        bundle, config, examples, lambda rows: collate_sft(rows, pad),
        epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, seed=seed,
        init_state=init.state if init is not None else None, on_step=on_step,
    )
