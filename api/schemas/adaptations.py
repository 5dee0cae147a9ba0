"""Adaptation jobs: documents in, self-edits and an adapter out."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from api.schemas.common import ID_MAX, MAX_TEXT, Strict
from api.schemas.documents import QuestionIn
from api.schemas.jobs import LoraIn, Progress, SelfEditOut
from seal_engine.config import Seed
from seal_service.settings import MAX_SELF_EDITS


class DocumentItem(Strict):
    """A document inline (``{title?, text}``) or a stored one (``{"id": ...}`` or just the id string)."""

    id: str | None = Field(None, min_length=1, max_length=ID_MAX)
    title: str = Field("", max_length=1000)
    text: str | None = Field(None, max_length=MAX_TEXT)

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, v: Any) -> Any:
        return {"id": v} if isinstance(v, str) else v

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("document text is empty")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> DocumentItem:
        if (self.id is None) == (self.text is None):
            raise ValueError("give either 'text' (a new document) or 'id' (a stored document)")
        return self


class AdaptationCreate(Strict):
    documents: list[DocumentItem] = Field(
        min_length=1, description="documents ({title?, text}) or ids of stored documents (POST /v1/documents)"
    )
    base_model: str | None = Field(None, max_length=200)
    strategy: str | None = Field(
        None, max_length=64,
        description="implications, implications-long, rewrite, self-qa, passage, custom; "
        "default: the promoted RL policy if any, else implications",
    )
    template: str | None = Field(None, max_length=20_000, description="for strategy custom: {title} and {context}")
    num_self_edits: int = Field(5, ge=1, le=MAX_SELF_EDITS, description="self-edits sampled per document")
    lora: LoraIn = Field(default_factory=LoraIn)
    eval_questions: list[QuestionIn] | None = Field(None, max_length=10_000)
    name: str | None = Field(None, max_length=200)
    seed: Seed | None = None


class AdaptationOut(BaseModel):
    id: str
    object: Literal["adaptation"] = "adaptation"
    name: str | None
    status: str
    progress: Progress
    base_model: str
    strategy: str
    policy_id: str | None
    num_self_edits: int
    lora: dict[str, Any]
    documents: list[str]
    num_eval_questions: int
    self_edits: list[SelfEditOut]
    metrics: dict[str, Any] | None
    error: str | None
    adapter_id: str | None = Field(description="set once the job has succeeded")
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AdaptationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdaptationOut]
