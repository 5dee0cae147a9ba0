"""Adaptation jobs: documents in, self-edits and an adapter out."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, GetJsonSchemaHandler, field_validator, model_validator

from api.schemas.common import ID_MAX, MAX_TEXT, Strict
from api.schemas.documents import QuestionIn
from api.schemas.jobs import JobErrorOut, LoraIn, Progress, SelfEditOut
from seal_service.aliases import ALIAS_PATTERN
from seal_engine.config import (AnchorCount, AnchorWeight, ForgettingBound, RelevanceQuantile, Seed, SelfEdits,
                                TrainingFormat, UpdateScale)


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

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        # What the validators accept, said in the schema: a stored document's id (bare or as
        # {"id"}), or a new document {title?, text} with some non-blank text; never both.
        ident = {"type": "string", "minLength": 1, "maxLength": ID_MAX}
        text = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": r"\S"}
        return {
            "title": "DocumentItem",
            "description": cls.__doc__,
            "oneOf": [
                ident,
                {"type": "object", "properties": {"id": ident}, "required": ["id"], "additionalProperties": False},
                {"type": "object", "properties": {"title": {"type": "string", "maxLength": 1000}, "text": text},
                 "required": ["text"], "additionalProperties": False},
            ],
        }


class RecipeIn(Strict):
    """Overrides of the server's recipe (SEAL_RECIPE__*, seal_engine.config.RecipeSettings)."""

    training_format: TrainingFormat | None = Field(
        None, description="text: train on the sequences as text; chat: as assistant replies")
    replay: AnchorCount | None = Field(None, description="base-model replies to generic prompts trained as data")
    anchors: AnchorCount | None = Field(
        None, description="base-model replies on which a KL penalty holds the adapter to the base model")
    anchor_weight: AnchorWeight | None = None
    scale: UpdateScale | None = Field(None, description="the trained update is multiplied by this")
    fallback_scales: list[UpdateScale] | None = Field(
        None, max_length=4, description="over max_forgetting, the update scaled down by each in turn before rejecting it")
    relevance: bool | None = Field(
        None, description="true: served, the adapter answers only the requests about its documents (their relevance "
        "gain passes its threshold), the base model the rest; false: every request that names it; default: the "
        "server's SEAL_RECIPE__RELEVANCE")
    relevance_quantile: RelevanceQuantile | None = Field(
        None, description="the threshold: this quantile of the adapter's gains on general requests (about 1 - q of "
        "them still reach it; unused with relevance false); default: the server's SEAL_RECIPE__RELEVANCE_QUANTILE")
    rehearse: bool | None = Field(
        None, description="with a parent: true trains the parent's sequences again beside the new documents' "
        "(default: the server's SEAL_RECIPE__REHEARSE), false the new documents only")
    continue_parent: bool | None = Field(
        None, description="with a parent: true continues training the parent's weights (default: the server's "
        "SEAL_RECIPE__CONTINUE_PARENT), false trains a fresh adapter on the new and rehearsed sequences")


class AdaptationCreate(Strict):
    documents: list[DocumentItem] = Field(
        min_length=1, description="documents ({title?, text}) or ids of stored documents (POST /v1/documents)"
    )
    base_model: str | None = Field(None, max_length=200)
    strategy: str | None = Field(
        None, max_length=64,
        description="implications, implications-long, rewrite, self-qa, passage, custom; "
        "default: the promoted RL policy if any, else the server's recipe (SEAL_RECIPE__STRATEGY)",
    )
    template: str | None = Field(None, max_length=20_000, description="for strategy custom: {title} and {context}")
    num_self_edits: SelfEdits | None = Field(
        None, description="self-edits sampled per document; default: the server's recipe")
    lora: LoraIn = Field(default_factory=LoraIn)
    recipe: RecipeIn = Field(default_factory=RecipeIn)
    max_forgetting: ForgettingBound | None = Field(
        None, description="the retention gate: the adapter is rejected (job failed, error.code "
        "forgetting_exceeded) when it forgets more than this share of the gate probes; "
        "default: the server's SEAL_RECIPE__MAX_FORGETTING")
    eval_questions: list[QuestionIn] | None = Field(None, max_length=10_000)
    name: str | None = Field(None, max_length=200)
    seed: Seed | None = None
    parent: str | None = Field(
        None, min_length=1, max_length=ID_MAX,
        description="an adapter id or alias of this tenant: the new adapter is its next version, trained from its "
        "weights on these documents (its LoRA settings are inherited), graded on its ancestors' questions too, and "
        "rejected (error.code ancestor_forgetting_exceeded) when it loses more than max_forgetting of any of them")
    alias: str | None = Field(
        None, pattern=ALIAS_PATTERN,
        description="once the adapter is registered, this alias points at it (created if new); a rejected or "
        "failed job leaves it where it was")


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
    recipe: dict[str, Any] = Field(description="the request's recipe overrides")
    max_forgetting: float | None = Field(description="the retention bound the job runs under")
    documents: list[str]
    num_eval_questions: int
    self_edits: list[SelfEditOut]
    metrics: dict[str, Any] | None
    error: JobErrorOut | None
    adapter_id: str | None = Field(description="set once the job has succeeded")
    parent_id: str | None = Field(None, description="the adapter this job's adapter is the next version of")
    alias: str | None = Field(None, description="the alias moved to the adapter once registered")
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class AdaptationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdaptationOut]
