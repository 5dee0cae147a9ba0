"""The sections of the engine settings (plain pydantic models, no dependencies).

They live apart from :mod:`seal_engine.settings` so that sub-packages whose own
settings nest one of them (the few-shot settings nest ``LoraSettings``) can import
them without importing the whole settings object.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field


class LoraSettings(BaseModel):
    """Inner-loop LoRA hyperparameters. Defaults measured to make the default model learn a fact."""

    rank: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1, le=1024)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"]
    )
    epochs: int = Field(10, ge=1, le=200)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=512)
    max_seq_length: int = Field(256, ge=8, le=8192)
    seed: int = 0
    # Batched multi-LoRA training: the most tokens (rows x padded length) in one forward;
    # larger steps are split into micro-batches with accumulated gradients. None picks by
    # device: 1024 on CPU (larger gains nothing there), 16384 on a GPU (fills it).
    token_budget: int | None = Field(None, ge=16, le=1_048_576)

    # Fields that change how fast training runs, not what it computes: stored runs and
    # evaluations resume across different values of them.
    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"token_budget"})


class SamplingSettings(BaseModel):
    """How self-edits are sampled."""

    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1, le=8192)


class JudgeSettings(BaseModel):
    """Optional LLM judge reached through any OpenAI-compatible endpoint."""

    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    timeout_s: float = 60.0

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)


class SFTSettings(BaseModel):
    """Supervised fine-tuning of the self-edit policy (a LoRA on the generator)."""

    rank: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1, le=1024)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"])
    epochs: int = Field(2, ge=1, le=100)
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    batch_size: int = Field(4, ge=1, le=256)
    max_seq_length: int = Field(1024, ge=16, le=16384)
    seed: int = 0

    def as_lora(self) -> LoraSettings:
        return LoraSettings(rank=self.rank, alpha=self.alpha, dropout=self.dropout, target_modules=self.target_modules,
                            epochs=self.epochs, learning_rate=self.learning_rate, batch_size=self.batch_size,
                            max_seq_length=min(self.max_seq_length, 8192), seed=self.seed)
