"""Models (the OpenAI list format) and adapters."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel


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


class AdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterOut]


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Extensions (ignored by OpenAI clients). "lora": loaded by name through /v1/load_lora_adapter.
    kind: Literal["base", "adapter", "lora"] = "base"
    base_model: str | None = None
    name: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
