"""The engine's model, loaded on first use (job bodies take a ``bundle_fn`` so tests can pass a stand-in)."""

from __future__ import annotations

from typing import Any

from seal_service.settings import Settings


def load_model(settings: Settings) -> Any:
    from seal_engine.core.model import get_model

    return get_model(settings)
