"""RL: self-edit policy checkpoints and the runs that train them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.common import check_text
from seal_engine.rl.config import RLConfig


class PolicyOut(BaseModel):
    id: str
    object: Literal["policy"] = "policy"
    rl_run_id: str | None
    base_model: str
    strategy: str
    iteration: int
    metrics: dict[str, Any] | None
    promoted: bool
    promoted_at: datetime | None
    created_at: datetime


class PolicyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[PolicyOut]


class RLRunCreate(RLConfig):
    """An RL run: the engine's RLConfig (P=passages, N=samples, R=repeats, ...) plus its data."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | None = Field(None, description="a train.json-style file of passages with questions; for "
                                "task runs an ARC challenges file, a text-task file, or builtin:text-suite")
    documents: list[dict[str, Any]] | None = Field(None, description="uploaded passages: {title, text, questions}")
    tasks: list[dict[str, Any]] | None = Field(None, description="uploaded few-shot tasks: {name?, train, test}")
    solutions: str | None = Field(None, description="ARC solutions file (default: the one beside the challenges)")
    init_policy_id: str | None = Field(None, description="start from this policy checkpoint (default: base model)")

    @field_validator("*", mode="after")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return check_text(v)  # as every Strict body: no lone surrogates, no NUL, at any depth
