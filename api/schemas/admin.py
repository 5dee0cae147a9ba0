"""Admin views: keys, tenants, workers."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictBool

from api.schemas.common import Strict
from seal_service.keys import TENANT_RE


class KeyCreate(Strict):
    tenant: str = Field(min_length=1, max_length=64, pattern=TENANT_RE.pattern)
    admin: StrictBool = False  # 0 or "yes" is not a yes to admin rights
    name: str | None = Field(None, max_length=200)


class KeyOut(BaseModel):
    id: str
    tenant: str
    admin: bool
    key: str


class KeyInfo(BaseModel):
    """A key as listed (never the key itself: only its first characters)."""

    id: str
    tenant: str
    admin: bool
    name: str | None
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyInfo]


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
    # alive: heartbeat within SEAL_WORKER_LOST_AFTER_S; lost: none since (killed, host gone),
    # listed until SEAL_WORKER_PRUNE_AFTER_S.
    status: Literal["alive", "lost"]
