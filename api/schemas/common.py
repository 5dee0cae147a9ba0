"""What every request schema shares: strict parsing (no unknown fields, no NUL), size caps, ids.

Limits here are hard caps; settings may lower some of them.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

MAX_TEXT = 1_000_000
ID_MAX = 64

_ID = re.compile(r"[\w.:-]{1,64}")


def valid_id(value: str) -> bool:
    """Ids are short and plain; anything else cannot exist (and must not reach the database)."""
    return bool(_ID.fullmatch(value))


def _no_nul(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL characters; reject them up front (422, not 500).
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    if isinstance(value, list):
        for v in value:
            _no_nul(v)
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _nul(cls, v: Any) -> Any:
        return _no_nul(v)
