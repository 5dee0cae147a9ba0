"""Few-shot tasks: examples in, a recipe-trained adapter out; solving new inputs with it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import Strict
from api.schemas.jobs import JobErrorOut, LoraIn, Progress, SelfEditOut
from seal_engine.config import Seed

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
    seed: Seed | None = None


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
    error: JobErrorOut | None
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
