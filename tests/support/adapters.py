"""Adapters made for tests without training."""

from __future__ import annotations

import torch

from seal_engine.config import LoraSettings
from seal_engine.core.lora import LoraAdapter, lora_config
from seal_engine.training.batched import peft_initial_state


def random_adapter(bundle, rank: int, seed: int, targets: list[str] | None = None) -> LoraAdapter:  # noqa: ANN001
    """PEFT layout with random A and B, large enough to change greedy answers."""
    cfg = LoraSettings(rank=rank, alpha=2 * rank, **({"target_modules": targets} if targets else {}))
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * (0.02 if "lora_B" in k else 0.05)
             for k, v in peft_initial_state(bundle, cfg, seed).items()}
    return LoraAdapter(lora_config(cfg, bundle.model_id, bundle), state)
