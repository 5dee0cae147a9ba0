"""Engine configuration: one pydantic-settings object, read from ``SEAL_*`` env vars.

Nested sections use ``__`` in env names, e.g. ``SEAL_LORA__RANK=32``. The service
settings (``api.settings``) extend this class, so a process has exactly one
settings object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .fewshot.settings import FewShotSettings
from .settings_sections import JudgeSettings, LoraSettings, SamplingSettings, SFTSettings

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"

__all__ = ["DEFAULT_MODEL_ID", "EngineSettings", "FewShotSettings", "JudgeSettings", "LoraSettings",
           "SFTSettings", "SamplingSettings"]


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
    # Few-shot task adaptation (POST /v1/tasks, RL on tasks): test-time training and recipes.
    fewshot: FewShotSettings = Field(default_factory=FewShotSettings)

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
