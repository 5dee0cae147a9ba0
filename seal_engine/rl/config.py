"""What defines an RL run (stored with it, so a resume uses the same), and its seeds.

Seeds are derived from (config seed, iteration, passage, sample, repeat), so any piece
recomputed after a crash gives the same result on the same machine.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from seal_engine.config import EngineSettings, FewShotSettings, LoraSettings, SamplingSettings, SFTSettings
from seal_engine.knowledge.prompts import get_strategy


class RLConfig(BaseModel):
    """Everything that defines an RL run (stored with it, so a resume uses the same).

    ``task`` picks what the policy learns to write: ``knowledge`` (self-edits of
    passages, graded by closed-book questions) or, for few-shot task adaptation, ``text``
    or ``arc`` (training recipes, graded by the adapted model on held-out examples; see
    :mod:`seal_engine.rl.fewshot`). For tasks, a "passage" below is a task.
    """

    task: Literal["knowledge", "text", "arc"] = "knowledge"
    passages: int = Field(8, ge=1, le=10000, description="P: passages per iteration")
    samples: int = Field(4, ge=1, le=64, description="N: self-edits sampled per passage")
    repeats: int = Field(1, ge=1, le=16, description="R: inner-loop trainings per self-edit (different seeds)")
    iterations: int = Field(1, ge=1, le=50)
    strategy: str = "implications"
    template: str | None = None
    # Keep a passage's best self-edit only if its reward beats the passage-only reward by this.
    keep_margin: float | None = None
    # Questions graded per passage (None: all of them).
    max_questions: int | None = Field(None, ge=1)
    # Fresh passages each iteration (iteration i takes the i-th block of P), or the same P.
    fresh_passages: bool = True
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(epochs=5))
    sft: SFTSettings = Field(default_factory=SFTSettings)
    sampling: SamplingSettings = Field(default_factory=lambda: SamplingSettings(max_new_tokens=256))
    retention_lambda: float = Field(1.0, ge=0.0)
    # What a self-edit's learning term is: "graded" (closed-book accuracy of the decoded answers, the
    # engine's reward_grader) or "likelihood" (the gold answers' mean per-token log-likelihood gain over
    # the base model as chat replies, teacher-forced: seal_engine.knowledge.likelihood). Both are
    # recorded per sample either way; knowledge runs only.
    reward: Literal["graded", "likelihood"] = "graded"
    retention_probes: int | None = Field(None, ge=0, description="None: the engine setting")
    # "stack": each iteration continues training the previous policy LoRA; "fresh": a new
    # LoRA from the base model on this iteration's kept pairs.
    policy_init: str = Field("stack", pattern="^(stack|fresh)$")
    # Few-shot tasks: test-time training, recipe bounds and budget, recipe sampling.
    fewshot: FewShotSettings = Field(default_factory=FewShotSettings)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if not self.is_task:
            get_strategy(self.strategy, self.template)  # UnknownStrategyError is a ValueError -> 422
            if self.strategy == "passage":
                raise ValueError("RL needs a self-edit strategy, not the passage-only baseline")
        elif self.repeats != 1:
            raise ValueError("few-shot task runs train each recipe once (repeats = 1)")
        elif self.reward != "graded":
            raise ValueError("few-shot task runs reward recipes by their graded held-out answers (reward = graded)")
        return self

    @property
    def is_task(self) -> bool:
        return self.task != "knowledge"

    @classmethod
    def small(cls, **overrides: Any) -> RLConfig:
        """One iteration in well under an hour on 2 CPU cores with the default model."""
        base = dict(passages=4, samples=3, repeats=1, max_questions=5, lora=LoraSettings(epochs=5),
                    sampling=SamplingSettings(max_new_tokens=128), sft=SFTSettings(epochs=2), retention_probes=16)
        return cls(**{**base, **overrides})

    def engine_settings(self, settings: EngineSettings) -> EngineSettings:
        update: dict[str, Any] = {"retention_lambda": self.retention_lambda, "sampling": self.sampling}
        if self.retention_probes is not None:
            update["retention_probes"] = self.retention_probes
        return settings.model_copy(update=update)


def sample_seed(config: RLConfig, iteration: int) -> int:
    return config.seed * 1_000_003 + iteration * 7919 + 17


def candidate_seed(config: RLConfig, iteration: int, passage: int, sample: int, repeat: int) -> int:
    return config.seed + 100_000 * iteration + 1000 * passage + 10 * sample + repeat
