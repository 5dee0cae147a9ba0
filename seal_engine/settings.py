"""Engine configuration: one pydantic-settings object, read from ``SEAL_*`` env vars.

Nested sections use ``__`` in env names, e.g. ``SEAL_LORA__RANK=32``. The service
settings (``api.settings``) extend this class, so a process has exactly one
settings object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"


class LoraSettings(BaseModel):
    """Inner-loop LoRA hyperparameters. Defaults measured to make the default model learn a fact."""

    rank: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1, le=1024)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"]
    )
    epochs: int = Field(10, ge=1, le=200)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1, le=512)
    max_seq_length: int = Field(256, ge=8, le=8192)
    seed: int = 0


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

    # Question answering (grading) generation.
    answer_max_new_tokens: int = Field(32, ge=1, le=64)
    answer_batch_size: int = Field(128, ge=1)
    # Grader behind rewards and retention: exact_match, f1, contains or judge.
    reward_grader: Literal["exact_match", "f1", "contains", "judge"] = "contains"
    # Reward: adapted accuracy - retention_lambda * max(0, baseline_retention - retention).
    retention_lambda: float = Field(1.0, ge=0.0)
    # How many retention probes to score per adapter (0 = all).
    retention_probes: int = Field(64, ge=0)

    @field_validator("model_path", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v in ("", None) else v

    @property
    def model_id(self) -> str:
        return self.model_path.name if self.model_path else DEFAULT_MODEL_ID


class SFTSettings(BaseModel):
    """Supervised fine-tuning of the self-edit policy (a LoRA on the generator)."""

    rank: int = Field(16, ge=1, le=256)
    alpha: int = Field(32, ge=1, le=1024)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["all-linear"])
    epochs: int = Field(2, ge=1, le=100)
    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    batch_size: int = Field(4, ge=1, le=256)
    max_seq_length: int = Field(1024, ge=16, le=16384)
    seed: int = 0

    def as_lora(self) -> LoraSettings:
        return LoraSettings(rank=self.rank, alpha=self.alpha, dropout=self.dropout, target_modules=self.target_modules,
                            epochs=self.epochs, learning_rate=self.learning_rate, batch_size=self.batch_size,
                            max_seq_length=min(self.max_seq_length, 8192), seed=self.seed)
