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


def register_random_adapter(settings, bundle, tenant: str, rank: int = 16, seed: int = 0,  # noqa: ANN001
                            base_model: str | None = None) -> str:
    """A random adapter saved in ``tenant``'s storage and registered ready (no job) for ``base_model``
    (default: the bundle's); returns its id."""
    from seal_service.db.base import new_id
    from seal_service.db.models import Adapter
    from seal_service.db.session import session_scope

    adapter_id = new_id("adp")
    path = settings.resolved_storage_dir / tenant / adapter_id
    random_adapter(bundle, rank, seed).save(path)
    with session_scope(settings.resolved_database_url) as db:
        db.add(Adapter(id=adapter_id, tenant_id=tenant, base_model=base_model or bundle.model_id, storage_path=str(path),
                       status="ready", strategy="passage", size_bytes=1,
                       lora=LoraSettings(rank=rank, alpha=2 * rank).model_dump()))
    return adapter_id
