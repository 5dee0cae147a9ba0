"""Models (the OpenAI list format) and adapters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import ID_MAX, Strict


class AdapterOut(BaseModel):
    id: str
    object: Literal["adapter"] = "adapter"
    name: str | None
    base_model: str
    status: str
    strategy: str
    policy_id: str | None
    job_id: str | None
    metrics: dict[str, Any] | None
    lora: dict[str, Any] | None
    size_bytes: int
    files: list[str]
    created_at: datetime
    parent_id: str | None = Field(None, description="the version it was trained from (None: the base model)")
    lineage: dict[str, Any] | None = Field(
        None, description="versions root to this one (documents, questions, own accuracy), every document learned, "
        "and matrix[i][j]: version i's accuracy on version j's questions")
    aliases: list[str] = Field(default_factory=list, description="the aliases pointing at it")


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterOut]


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions (ignored by OpenAI clients). "lora": loaded by name through /v1/load_lora_adapter.
    kind: Literal["base", "adapter", "lora", "alias"] = "base"
    base_model: str | None = None
    name: str | None = None
    adapter_id: str | None = Field(None, description="an alias: the adapter it points at")
    parent_id: str | None = None
    lineage: dict[str, Any] | None = None


class AliasIn(Strict):
    adapter_id: str = Field(min_length=1, max_length=ID_MAX, description="the adapter the alias points at")


class AliasOut(BaseModel):
    name: str
    object: Literal["alias"] = "alias"
    adapter_id: str
    created_at: datetime
    updated_at: datetime


class AliasList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AliasOut]


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
