"""Stored documents, and the question/answer pairs that grade an adaptation."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from api.schemas.common import MAX_TEXT, Strict


# The not-blank validators below, said in the schema (a pattern matches anywhere in the string).
_NOT_BLANK = {"pattern": r"\S"}


class DocumentIn(Strict):
    title: str = Field("", max_length=1000)
    text: str = Field(min_length=1, max_length=MAX_TEXT, json_schema_extra=_NOT_BLANK)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("document text is empty")
        return v


class DocumentOut(BaseModel):
    id: str
    object: Literal["document"] = "document"
    title: str
    text: str
    created_at: datetime


class QuestionIn(Strict):
    question: str = Field(min_length=1, max_length=4000, json_schema_extra=_NOT_BLANK)
    answer: str = Field(min_length=1, max_length=4000, json_schema_extra=_NOT_BLANK)

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()
