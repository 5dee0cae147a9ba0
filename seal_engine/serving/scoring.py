"""Teacher-forced scoring: the negative log-likelihood of each token of token rows, every row under
its own adapter slot (or the base model), rows of any mix sharing the forward passes.

The caller has the slots loaded and in the model (:func:`seal_engine.serving.lora_slots.serving`,
or a decoder's :class:`~seal_engine.serving.lora_slots.ServingLora` attached under the lock).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from seal_engine.core.model import ModelBundle
from seal_engine.serving.lora_slots import ServingLora
from seal_engine.training.sft import IGNORE  # a label that is not scored

# (slot, input_ids, labels): slot -1 is the base model; labels[t] is the token scored at position t
# (IGNORE: not scored); position 0 is never scored (nothing predicts it).
ScoreRow = tuple[int, Sequence[int], Sequence[int]]


@torch.inference_mode()
def token_nlls(bundle: ModelBundle, lora: ServingLora | None, rows: Sequence[ScoreRow], *,
               batch_size: int = 16) -> list[torch.Tensor]:
    """Per row, the NLL (nats, float32, on the CPU) of each scored token in order.

    Rows are batched by length (right-padded), so a row's figures do not depend on its neighbours
    beyond the kernels' rounding."""
    pad = bundle.tokenizer.pad_token_id if bundle.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))
    out: list[torch.Tensor | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(rows[i][1]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, i in enumerate(chunk):
            _, row_ids, row_labels = rows[i]
            ids[j, : len(row_ids)] = torch.as_tensor(list(row_ids))
            labels[j, : len(row_labels)] = torch.as_tensor(list(row_labels))
            mask[j, : len(row_ids)] = 1
        slots = [rows[i][0] for i in chunk]
        if lora is not None:
            lora.route(slots)
        elif any(s >= 0 for s in slots):
            raise ValueError("rows name adapter slots but no LoRA slots are given")
        dev = bundle.device
        logits = bundle.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits[:, :-1]
        target = labels[:, 1:].to(dev)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                              ignore_index=IGNORE, reduction="none").view(len(chunk), -1).cpu()
        scored = (target != IGNORE).cpu()
        for j, i in enumerate(chunk):
            out[i] = nll[j][scored[j]]
    if lora is not None:
        lora.route(None)
    return out  # type: ignore[return-value]
