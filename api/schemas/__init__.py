"""Request and response models, one module per resource; every name is importable from here.

Limits here are hard caps; settings may lower some of them. Bounds the engine also
enforces (LoRA hyperparameters, seeds) are the engine's annotated types
(:mod:`seal_engine.config`), not repeated here.
"""

from api.schemas.adaptations import AdaptationCreate, AdaptationList, AdaptationOut, DocumentItem, RecipeIn
from api.schemas.admin import KeyCreate, KeyOut, TenantOut, WorkerOut
from api.schemas.common import ID_MAX, MAX_TEXT, Strict, valid_id
from api.schemas.completions import (
    ChatCompletionIn,
    ChatMessage,
    CompletionIn,
    ContentPart,
    Lenient,
    Stop,
    StreamOptions,
    _SamplingParams,
)
from api.schemas.documents import DocumentIn, DocumentOut, QuestionIn
from api.schemas.jobs import JobErrorOut, LoraIn, Progress, SelfEditOut
from api.schemas.models import AdapterList, AdapterOut, AliasIn, AliasList, AliasOut, ModelList, ModelOut
from api.schemas.rl import PolicyList, PolicyOut, RLRunCreate
from api.schemas.tasks import MAX_TASK_EXAMPLES, SolveIn, SolveOut, TaskCreate, TaskOut
from seal_service.settings import MAX_SELF_EDITS

__all__ = [
    "ID_MAX",
    "MAX_SELF_EDITS",
    "MAX_TASK_EXAMPLES",
    "MAX_TEXT",
    "AdaptationCreate",
    "AdaptationList",
    "AdaptationOut",
    "AdapterList",
    "AdapterOut",
    "AliasIn",
    "AliasList",
    "AliasOut",
    "ChatCompletionIn",
    "ChatMessage",
    "CompletionIn",
    "ContentPart",
    "DocumentIn",
    "DocumentItem",
    "DocumentOut",
    "JobErrorOut",
    "KeyCreate",
    "KeyOut",
    "Lenient",
    "LoraIn",
    "ModelList",
    "ModelOut",
    "PolicyList",
    "PolicyOut",
    "Progress",
    "QuestionIn",
    "RecipeIn",
    "RLRunCreate",
    "SelfEditOut",
    "SolveIn",
    "SolveOut",
    "Stop",
    "StreamOptions",
    "Strict",
    "TaskCreate",
    "TaskOut",
    "TenantOut",
    "WorkerOut",
    "_SamplingParams",
    "valid_id",
]
