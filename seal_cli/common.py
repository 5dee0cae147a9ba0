"""What the ``seal`` commands share: the two consoles, settings from flags, model and judge loading.

Engine imports stay inside the functions so ``seal --help`` never loads torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(stderr=True)  # progress, logs and errors
out = Console()  # results only, so they can be piped

Rank = Annotated[Optional[int], typer.Option("--rank", help="LoRA rank (default from settings)")]
Epochs = Annotated[Optional[int], typer.Option("--epochs", help="inner-loop epochs")]
LR = Annotated[Optional[float], typer.Option("--lr", help="inner-loop learning rate")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="seed for sampling and LoRA init")]


def engine_settings(**overrides: object):
    """Engine settings from the environment, with CLI flags layered on top."""
    from seal_engine.config import EngineSettings, LoraSettings

    base = EngineSettings()
    lora = {k[5:]: v for k, v in overrides.items() if k.startswith("lora_") and v is not None}
    rest = {k: v for k, v in overrides.items() if not k.startswith("lora_") and v is not None}
    merged = base.model_dump()
    merged.update(rest)
    merged["lora"] = LoraSettings(**{**base.lora.model_dump(), **lora}).model_dump()
    return EngineSettings.model_validate(merged)


def load_model(settings):
    from seal_engine.core.model import get_model

    with console.status(f"loading {settings.model_id}"):
        return get_model(settings)


def make_judge(settings, use_judge: bool):
    if not use_judge:
        return None
    from seal_engine.core.grading import LLMJudge

    return LLMJudge(settings.judge)


def load_policy(path: Path | None):
    """A self-edit policy adapter (from ``seal rl``), or None for the base model."""
    if path is None:
        return None
    from seal_engine.core.lora import load_adapter

    return load_adapter(path)


def quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
