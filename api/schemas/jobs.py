"""What adaptation jobs and task jobs share: LoRA overrides, progress, self-edits."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator

from api.schemas.common import Strict
from seal_engine.config import Alpha, BatchSize, Dropout, Epochs, LearningRate, Rank, Seed, SeqLength


class LoraIn(Strict):
    """Overrides of the server's LoRA settings (SEAL_LORA__*); omitted fields keep those."""

    # The engine's types and bounds (seal_engine.config), so a request cannot ask for what
    # the settings would refuse.
    rank: Rank | None = None
    alpha: Alpha | None = None
    dropout: Dropout | None = None
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64)
    epochs: Epochs | None = None
    learning_rate: LearningRate | None = None
    batch_size: BatchSize | None = None
    max_seq_length: SeqLength | None = None
    seed: Seed | None = None

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not m or len(m) > 200 for m in v):
            raise ValueError("module names must be 1-200 characters")
        return v


class SelfEditOut(BaseModel):
    index: int
    document_id: str | None
    strategy: str
    policy_id: str | None
    text: str
    reward: dict[str, Any] | None = None


class JobErrorOut(BaseModel):
    """Why a job failed: ``code`` for programs (e.g. forgetting_exceeded, invalid_value,
    worker_lost, internal_error), ``message`` for people."""

    code: str
    message: str


class Progress(BaseModel):
    stage: str | None
    fraction: float
