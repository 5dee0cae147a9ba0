"""Few-shot adaptation settings (meant to nest in the engine settings as ``fewshot``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from seal_engine.settings_sections import LoraSettings

from .augment import GEOMETRIC_OPS


class FewShotSettings(BaseModel):
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
    # The LoRA shape of every test-time adapter (epochs and learning rate come from the recipe).
    lora: LoraSettings = Field(default_factory=LoraSettings)
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
        bad = [t for t in v if t not in GEOMETRIC_OPS]
        if not v or bad:
            raise ValueError(f"inference transforms are among {', '.join(GEOMETRIC_OPS)}; got {bad or v}")
        return v
