"""Request and response models. Limits here are hard caps; settings may lower some of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


from seal_service.settings import MAX_SELF_EDITS

MAX_TEXT = 1_000_000
ID_MAX = 64


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


# --- documents -------------------------------------------------------------------------------


class DocumentIn(Strict):
    title: str = Field("", max_length=1000)
    text: str = Field(min_length=1, max_length=MAX_TEXT)

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
    question: str = Field(min_length=1, max_length=4000)
    answer: str = Field(min_length=1, max_length=4000)

    @field_validator("question", "answer")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()


# --- adaptations -----------------------------------------------------------------------------


class LoraIn(Strict):
    """Overrides of the server's LoRA settings (SEAL_LORA__*); omitted fields keep those."""

    rank: int | None = Field(None, ge=1, le=256)
    alpha: int | None = Field(None, ge=1, le=1024)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, min_length=1, max_length=64)
    epochs: int | None = Field(None, ge=1, le=200)
    learning_rate: float | None = Field(None, gt=0.0, le=1.0)
    batch_size: int | None = Field(None, ge=1, le=512)
    max_seq_length: int | None = Field(None, ge=8, le=8192)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not m or len(m) > 200 for m in v):
            raise ValueError("module names must be 1-200 characters")
        return v


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
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


class SelfEditOut(BaseModel):
    index: int
    document_id: str | None
    strategy: str
    policy_id: str | None
    text: str
    reward: dict[str, Any] | None = None


class Progress(BaseModel):
    stage: str | None
    fraction: float


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


# --- adapters and models ----------------------------------------------------------------------


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


# --- OpenAI-compatible completions ------------------------------------------------------------


class Lenient(BaseModel):
    # Unknown OpenAI parameters (presence_penalty, logit_bias, user, ...) are accepted and ignored.
    model_config = ConfigDict(extra="ignore")


class ContentPart(Lenient):
    type: str
    text: str | None = Field(None, max_length=MAX_TEXT)


class ChatMessage(Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = Field(None)
    name: str | None = Field(None, max_length=200)

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type in ("text", "input_text"))


class StreamOptions(Lenient):
    include_usage: bool = False


Stop = str | list[str] | None


class _SamplingParams(Lenient):
    model: str = Field(min_length=1, max_length=200)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Stop) -> Stop:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 200 for s in items):
            raise ValueError("stop sequences are 1-200 characters")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionIn(_SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionIn(_SamplingParams):
    prompt: str | list[str] = Field(description="a prompt or a list of prompts (token arrays are not supported)")

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not 1 <= len(v) <= 64:
            raise ValueError("between 1 and 64 prompts")
        if any(not p for p in ([v] if isinstance(v, str) else v)):
            raise ValueError("prompts must not be empty")
        return v


# --- admin ------------------------------------------------------------------------------------


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


# --- RL: self-edit policies -------------------------------------------------------------------


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


# --- few-shot tasks ------------------------------------------------------------------------------

MAX_TASK_EXAMPLES = 64


class TaskCreate(Strict):
    """A few-shot task: input/output examples (strings, or ARC grids: lists of lists of ints 0-9)."""

    train: list[dict[str, Any]] = Field(min_length=2, max_length=MAX_TASK_EXAMPLES,
                                        description="examples [{input, output}] the adapter learns from")
    test: list[dict[str, Any]] = Field(
        default_factory=list, max_length=MAX_TASK_EXAMPLES,
        description="held-out examples: with outputs they grade the recipes (the best is kept); "
        "ARC test inputs without outputs are allowed",
    )
    format: Literal["text", "arc"] | None = Field(None, description="default: arc when inputs are grids")
    name: str | None = Field(None, max_length=200)
    num_recipes: int = Field(1, ge=1, le=16, description="recipes the model writes (graded on test when given)")
    recipe: dict[str, Any] | None = Field(
        None, description="train with this recipe instead of writing one: "
        "{augmentations, loss: all|output, learning_rate, epochs, max_examples?}",
    )
    lora: LoraIn = Field(default_factory=LoraIn)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


class TaskOut(BaseModel):
    id: str
    object: Literal["task"] = "task"
    format: str
    name: str | None
    status: str
    progress: Progress
    base_model: str
    policy_id: str | None
    num_recipes: int
    num_train: int
    num_test: int
    recipes: list[SelfEditOut] = Field(description="the recipes as written (the self-edits)")
    metrics: dict[str, Any] | None = Field(description="chosen recipe, every candidate, held-out grades, prompt format")
    error: str | None
    adapter_id: str | None = Field(description="set once the job has succeeded; use it as `model`")
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class SolveIn(Strict):
    inputs: list[Any] = Field(min_length=1, max_length=16,
                              description="new inputs: ARC grids or strings, in the task's format")


class SolveOut(BaseModel):
    object: Literal["task.solution"] = "task.solution"
    task_id: str
    adapter_id: str
    outputs: list[Any] = Field(description="ARC: up to two grids (attempts) per input; text: one string per input")
