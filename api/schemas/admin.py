"""Admin views: keys, tenants, workers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from api.schemas.common import Strict


class KeyCreate(Strict):
    tenant: str = Field(min_length=1, max_length=64)
    admin: bool = False
    name: str | None = Field(None, max_length=200)


class KeyOut(BaseModel):
    id: str
    tenant: str
    admin: bool
    key: str


class TenantOut(BaseModel):
    id: str
    created_at: datetime
    keys: int


class WorkerOut(BaseModel):
    id: str
    hostname: str
    pid: int
    queue: str
    base_model: str
    started_at: datetime
    last_seen: datetime
