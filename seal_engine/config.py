"""Every engine setting in one tree, read from ``SEAL_*`` environment variables.

Nested sections use ``__`` in env names, e.g. ``SEAL_LORA__RANK=32`` or
``SEAL_FEWSHOT__LORA__RANK=8``. The service settings (:mod:`seal_service.settings`)
extend :class:`EngineSettings`, so a process has exactly one settings object.

The LoRA hyperparameters and their bounds are defined once, as the annotated types
below: :class:`LoraSettings` uses them, :class:`SFTSettings` only changes defaults, and
the API's request schema (``api.schemas.LoraIn``) reuses the same types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"

# --- LoRA fields: the bounds, defined once ----------------------------------------------------
Rank = Annotated[int, Field(ge=1, le=256)]
Alpha = Annotated[int, Field(ge=1, le=1024)]
Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
Epochs = Annotated[int, Field(ge=1, le=200)]
LearningRate = Annotated[float, Field(gt=0.0, le=1.0)]
BatchSize = Annotated[int, Field(ge=1, le=512)]
SeqLength = Annotated[int, Field(ge=8, le=8192)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
TokenBudget = Annotated[int, Field(ge=16, le=1_048_576)]

# --- Recipe fields (how a document becomes an adapter), shared with the API's request schema --
SelfEdits = Annotated[int, Field(ge=1, le=64)]
TrainingFormat = Literal["text", "chat"]
AnchorCount = Annotated[int, Field(ge=0, le=64)]
AnchorWeight = Annotated[float, Field(ge=0.0, le=100.0)]
UpdateScale = Annotated[float, Field(gt=0.0, le=2.0)]
ForgettingBound = Annotated[float, Field(ge=0.0, le=1.0)]
RelevanceQuantile = Annotated[float, Field(ge=0.0, le=1.0)]


class LoraSettings(BaseModel):
    """Inner-loop LoRA hyperparameters. Defaults measured to make the default model learn a fact."""

    rank: Rank = 16
    alpha: Alpha = 32
    dropout: Dropout = 0.0
    # The feed-forward layers only: on dev passages they learned as much as all linear layers and
    # forgot half as much (BENCHMARKS.md, issue 13). "all-linear", or module names, also work.
    target_modules: list[str] = Field(default_factory=lambda: ["all-mlp"])
    epochs: Epochs = 10
    learning_rate: LearningRate = 1e-3
    batch_size: BatchSize = 8
    max_seq_length: SeqLength = 256
    seed: Seed = 0
    # Batched multi-LoRA training: the most tokens (rows x padded length) in one forward;
    # larger steps are split into micro-batches with accumulated gradients. None picks by
    # device: 1024 on CPU (larger gains nothing there), 16384 on a GPU (fills it).
    token_budget: TokenBudget | None = None

    # Fields that change how fast training runs, not what it computes: stored runs and
    # evaluations resume across different values of them.
    EXECUTION_ONLY: ClassVar[frozenset[str]] = frozenset({"token_budget"})


class SFTSettings(LoraSettings):
    """Supervised fine-tuning of the self-edit policy (a LoRA on the generator): the same
    fields and bounds as :class:`LoraSettings`, other defaults."""

    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"])
    epochs: Epochs = 2
    learning_rate: LearningRate = 3e-4
    batch_size: BatchSize = 4
    max_seq_length: SeqLength = 1024

    def as_lora(self) -> LoraSettings:
        return LoraSettings(**self.model_dump())


class SamplingSettings(BaseModel):
    """How self-edits are sampled."""

    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(256, ge=1, le=8192)


class JudgeSettings(BaseModel):
    """Optional LLM judge reached through any OpenAI-compatible endpoint."""

    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    timeout_s: float = 60.0

    @property
    def enabled(self) -> bool:
        return bool(self.base_url and self.model)


class FewShotSettings(BaseModel):
    """Few-shot task adaptation (POST /v1/tasks, RL on tasks): test-time training and recipes."""

    # Test-time-training data.
    leave_out: list[int] = Field(default_factory=lambda: [1, 2], description="leave-n-out sizes")
    max_examples: int = Field(48, ge=1, le=2000, description="cap on training episodes per task")
    color_variants: int = Field(1, ge=0, le=8, description="colour-permuted copies per ARC episode")
    max_seq_length: int = Field(4096, ge=64, le=8192, description="episodes with more tokens are dropped")
    batch_size: int = Field(4, ge=1, le=64)
    # Recipes: bounds and the step budget (epochs * batches; larger recipes are refused).
    step_budget: int = Field(96, ge=1, le=100_000)
    max_epochs: int = Field(10, ge=1, le=100)
    lr_min: float = Field(1e-5, gt=0)
    lr_max: float = Field(1e-2, gt=0, le=1.0)
    # The LoRA shape of every test-time adapter (epochs and learning rate come from the recipe);
    # all linear layers: a task is a behaviour to learn, not facts (the knowledge default is all-mlp).
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(target_modules=["all-linear"]))
    # Inference: ARC test inputs are answered under these transforms, then voted on.
    inference_transforms: list[str] = Field(default_factory=lambda: ["identity", "transpose", "flip_h", "rot180"])
    attempts: int = Field(2, ge=1, le=8, description="answers per ARC test input (pass@k)")
    generation_batch_size: int = Field(8, ge=1, le=256)
    text_max_new_tokens: int = Field(32, ge=1, le=512)
    # Recipe sampling. "constrained" decodes under the recipe's grammar (always valid JSON,
    # learning rate from ``recipe_learning_rates``); "free" lets the writer type anything
    # and re-draws what does not parse (for writers large enough to follow the schema).
    recipe_decoding: Literal["constrained", "free"] = "constrained"
    recipe_learning_rates: list[float] = Field(default_factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3])
    recipe_temperature: float = Field(1.0, ge=0.0, le=5.0)
    recipe_top_p: float = Field(0.95, gt=0.0, le=1.0)
    recipe_max_new_tokens: int = Field(64, ge=8, le=1024)
    max_resamples: int = Field(2, ge=0, le=10, description="extra draws for an invalid recipe")
    # Text paraphrase augmentation: paraphrases sampled per train input (0: never).
    paraphrases: int = Field(2, ge=0, le=8)
    seed: int = 0

    @field_validator("leave_out")
    @classmethod
    def _leave_out(cls, v: list[int]) -> list[int]:
        if not v or any(n not in (1, 2, 3) for n in v):
            raise ValueError("leave_out holds 1, 2 or 3")
        return sorted(set(v))

    @model_validator(mode="after")
    def _rates_in_bounds(self) -> FewShotSettings:
        if self.lr_min > self.lr_max:
            raise ValueError("lr_min is above lr_max")
        rates = self.recipe_learning_rates
        if "recipe_learning_rates" not in self.model_fields_set:  # the default grid follows the bounds
            rates = [r for r in rates if self.lr_min <= r <= self.lr_max] or [self.lr_min, self.lr_max]
        if not rates or any(not self.lr_min <= r <= self.lr_max for r in rates):
            raise ValueError(f"recipe_learning_rates must be non-empty and within [lr_min, lr_max]; got {rates}")
        self.recipe_learning_rates = sorted(set(rates))
        return self

    @field_validator("inference_transforms")
    @classmethod
    def _transforms(cls, v: list[str]) -> list[str]:
        from seal_engine.fewshot.augment import GEOMETRIC_OPS  # pure Python, no torch

        bad = [t for t in v if t not in GEOMETRIC_OPS]
        if not v or bad:
            raise ValueError(f"inference transforms are among {', '.join(GEOMETRIC_OPS)}; got {bad or v}")
        return v


class RecipeSettings(BaseModel):
    """What adapting to documents does when a request says nothing (``SEAL_RECIPE__*``).

    The defaults are the recipe chosen on dev passages by ``bench/quality.py`` (BENCHMARKS.md,
    "Adaptation quality on the user's path"); every field is overridable per request.
    """

    strategy: str = "passage"  # a self-edit strategy (seal_engine.knowledge.prompts) or "passage"
    num_self_edits: SelfEdits = 1
    training_format: TrainingFormat = "text"  # "chat": sequences as chat replies, loss on the reply
    replay: AnchorCount = 0  # base-model replies to generic prompts trained as data
    anchors: AnchorCount = 0  # base-model replies on which a KL penalty holds the adapter to the base
    anchor_weight: AnchorWeight = 1.0
    scale: UpdateScale = 1.0  # the trained update is multiplied by this before it is saved
    # Over max_forgetting, the update scaled down by each of these in turn (no retraining) before
    # the adapter is rejected.
    fallback_scales: list[UpdateScale] = Field(default_factory=lambda: [0.7, 0.5], max_length=4)
    # The retention gate: an adapter forgetting more than this share of the gate probes is
    # scaled down (fallback_scales), then rejected (None: measured and reported, never rejected).
    max_forgetting: ForgettingBound | None = 0.3
    # Served, the adapter answers only the requests about its documents, the base model the rest
    # (seal_engine.serving.relevance): its threshold is this quantile of its relevance gains on
    # general requests (the gate half), so about 1 - q of general requests still reach it.
    relevance: bool = True
    relevance_quantile: RelevanceQuantile = 0.95
    # A new version of an adapter (a job with a parent) trains on its parent's sequences again
    # beside the new documents' (seal_engine.knowledge.lineage); false: the new documents only.
    rehearse: bool = True
    # A new version continues its parent's LoRA weights; false: a fresh adapter on the new and rehearsed sequences.
    continue_parent: bool = True

    ADAPT_FIELDS: ClassVar[tuple[str, ...]] = ("training_format", "replay", "anchors", "anchor_weight", "scale",
                                              "fallback_scales")

    def adapt_kwargs(self) -> dict[str, object]:
        """The keyword arguments of ``seal_engine.knowledge.adapt.adapt`` this recipe sets
        (strategy, k and the gate are passed by name)."""
        return {**{name: getattr(self, name) for name in self.ADAPT_FIELDS},
                "relevance_quantile": self.relevance_quantile if self.relevance else None}


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEAL_", env_nested_delimiter="__", extra="ignore")

    # Where converted models, adapters and caches live.
    data_dir: Path = Path.home() / ".local" / "share" / "seal"
    # A local Hugging Face model directory; empty means the embedded default model.
    model_path: Path | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # "auto": bf16 where the hardware runs it fast (CUDA, or a CPU with AMX), else fp32.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # None: decide from the tokenizer (a chat template means a chat model).
    chat_model: bool | None = None
    torch_threads: int | None = None

    lora: LoraSettings = Field(default_factory=LoraSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    fewshot: FewShotSettings = Field(default_factory=FewShotSettings)
    recipe: RecipeSettings = Field(default_factory=RecipeSettings)

    # Question answering (grading) generation.
    answer_max_new_tokens: int = Field(32, ge=1, le=64)
    # A job's grades of its own and its chain's questions (seal_engine.knowledge.lineage): reply tokens
    # read on the chat path (a right name after a sentence about the document still counts).
    lineage_answer_tokens: int = Field(64, ge=1, le=512)
    answer_batch_size: int = Field(128, ge=1)
    # Grader behind rewards and retention: exact_match, f1, contains or judge.
    reward_grader: Literal["exact_match", "f1", "contains", "judge"] = "contains"
    # Reward: adapted accuracy - retention_lambda * max(0, baseline_retention - retention).
    retention_lambda: float = Field(1.0, ge=0.0)
    # How many retention probes to score per adapter (0 = all).
    retention_probes: int = Field(64, ge=0)
    # Forgetting, asked through the chat path on the gate half of the probes and generic prompts
    # (seal_engine.knowledge.forgetting): how many of each an adapter is checked on (0 = all
    # of its half), and the reply length of a probe answer. The defaults keep the gate near 10 s per
    # adapter on 2 CPU cores (32 probes decoded 24 tokens: 0.3 s a step in float32); a probe counts
    # only if the base model answers it within that length (22 of the 32 for the default model).
    forgetting_probes: int = Field(32, ge=0)
    forgetting_prompts: int = Field(8, ge=0)
    forgetting_probe_tokens: int = Field(24, ge=1, le=512)
    # Relevance calibration (seal_engine.serving.relevance): how many of the gate half's requests
    # (its probe questions and generic prompts, taken evenly spaced) an adapter's threshold is
    # calibrated on; 0 = all of them (124 for the built-in probe set, ~3 s on 2 cores). Fewer is
    # faster and coarser: the quantile is read off fewer gains.
    relevance_requests: int = Field(0, ge=0)

    @field_validator("model_path", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v in ("", None) else v

    @property
    def model_id(self) -> str:
        return self.model_path.name if self.model_path else DEFAULT_MODEL_ID


def describe_invalid(error: ValidationError) -> str:
    """Invalid settings on one line a user can act on: ``invalid settings: field: msg; ...``."""
    return "invalid settings: " + "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in error.errors())
