"""What adaptation jobs and task jobs share: LoRA overrides, progress, self-edits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import Strict
from seal_engine.config import Alpha, BatchSize, Dropout, Epochs, LearningRate, Rank, Seed, SeqLength
from seal_service.db.models import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED

# What ``?status=`` filters on (the statuses of adaptation and task jobs, and of RL runs).
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
assert set(JobStatus.__args__) == {QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED}


class LoraIn(Strict):
    """Overrides of the server's LoRA settings (SEAL_LORA__*); omitted fields keep those."""

    # The engine's types and bounds (seal_engine.config), so a request cannot ask for what
    # the settings would refuse.
    rank: Rank | None = None
    alpha: Alpha | None = None
    dropout: Dropout | None = None
    target_modules: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=1, max_length=64)
    epochs: Epochs | None = None
    learning_rate: LearningRate | None = None
    batch_size: BatchSize | None = None
    max_seq_length: SeqLength | None = None
    seed: Seed | None = None



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
