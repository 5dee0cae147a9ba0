"""What every request schema shares: strict parsing (no unknown fields, no NUL, only text that
UTF-8 can encode), size caps, ids.

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


# Lone surrogates (JSON "\ud800" escapes decode to them) cannot be encoded as UTF-8: the tokenizer,
# the database and the JSON encoder of an error body would all fail on them later (a 500, and a
# response that could not even be written). They are rejected where the body is validated.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad(text: str, nul: bool) -> str | None:
    if _SURROGATE.search(text):
        return "must be valid Unicode text: lone surrogates (\\ud800-\\udfff) are not allowed"
    # PostgreSQL text cannot hold NUL characters; reject them up front (422, not 500).
    if nul and "\x00" in text:
        return "must not contain NUL (\\u0000) characters"
    return None


def check_text(value: Any, *, nul: bool = True) -> Any:
    """``value`` unchanged, or ValueError if a string in it (dict keys too, at any depth) cannot be
    encoded as UTF-8 or, with ``nul``, holds NUL. The message says where, never the text itself."""
    todo: list[tuple[str, Any]] = [("", value)]
    while todo:  # a loop, not recursion: nesting depth cannot hide a string
        path, v = todo.pop()
        if isinstance(v, str):
            problem = _bad(v, nul)
            if problem:
                raise ValueError(problem + (f" (at {path})" if path else ""))
        elif isinstance(v, (list, tuple)):
            todo.extend((f"{path}[{i}]", x) for i, x in enumerate(v))
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str) and (problem := _bad(k, nul)):
                    raise ValueError(f"{problem} (in a key{' at ' + path if path else ''})")
                todo.append((f"{path}.{k}" if path else str(k), x))
    return value


class Strict(BaseModel):
    """Request bodies of this service's own routes: unknown fields refused, text checked (no NUL)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return check_text(v)


class Lenient(BaseModel):
    """OpenAI-compatible bodies: unknown parameters accepted and ignored, text checked (NUL allowed:
    it is text for a model, not for the database)."""

    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return check_text(v, nul=False)
