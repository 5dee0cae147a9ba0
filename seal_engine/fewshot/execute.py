"""Executing a recipe: its training episodes, the budget check, and the adapter."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from seal_engine.config import FewShotSettings
from seal_engine.core.lora import TrainedAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.fewshot.arc import ArcTask
from seal_engine.fewshot.prompts import FewShotTask, arc_completion, arc_prompt, domain_of, text_completion, text_prompt
from seal_engine.fewshot.recipes import Recipe, RecipeError, check_budget, example_limit
from seal_engine.fewshot.training import Example, encode_pair, train_adapter
from seal_engine.fewshot.ttt_data import Episode, arc_episodes, text_episodes


@dataclass
class TrainingPlan:
    recipe: Recipe
    episodes: list[Episode]
    pairs: list[tuple[str, str]]  # (prompt, completion) per kept episode
    examples: list[Example]
    steps: int


@dataclass
class RecipeRun:
    plan: TrainingPlan
    adapter: TrainedAdapter
    seconds: float  # planning + training


def episode_pairs(bundle: ModelBundle, task: FewShotTask, episodes: Sequence[Episode]) -> list[tuple[str, str]]:
    if isinstance(task, ArcTask):
        return [(arc_prompt(bundle, e.demos, e.query.input), arc_completion(e.query.output)) for e in episodes]
    return [(text_prompt(bundle, e.demos, e.query.input), text_completion(bundle, e.query.output)) for e in episodes]


def build_episodes(task: FewShotTask, recipe: Recipe, settings: FewShotSettings, *, seed: int,
                   paraphrases: Mapping[str, Sequence[str]] | None = None) -> list[Episode]:
    limit = example_limit(recipe, settings)
    if isinstance(task, ArcTask):
        return arc_episodes(task, recipe.augmentations, leave_out=settings.leave_out, max_examples=limit,
                            color_variants=settings.color_variants, seed=seed)
    return text_episodes(task, recipe.augmentations, leave_out=settings.leave_out, max_examples=limit,
                         paraphrases=paraphrases, seed=seed)


def plan_recipe(bundle: ModelBundle, task: FewShotTask, recipe: Recipe, settings: FewShotSettings, *, seed: int,
                paraphrases: Mapping[str, Sequence[str]] | None = None) -> TrainingPlan:
    """Episodes, texts and token ids for the recipe; RecipeError if nothing fits or it is over budget."""
    episodes = build_episodes(task, recipe, settings, seed=seed, paraphrases=paraphrases)
    encoded = [(pair, encode_pair(bundle, *pair, recipe.loss, settings.max_seq_length))
               for pair in episode_pairs(bundle, task, episodes)]
    pairs = [pair for pair, ex in encoded if ex is not None]
    examples = [ex for _, ex in encoded if ex is not None]
    if not examples:
        raise RecipeError(
            f"no training episode fits in {settings.max_seq_length} tokens" if episodes
            else f"{len(task.train)} train pairs are too few for leave-n-out"
        )
    steps = check_budget(recipe, len(examples), settings)
    return TrainingPlan(recipe, episodes, pairs, examples, steps)


def execute_recipe(
    bundle: ModelBundle,
    task: FewShotTask,
    recipe: Recipe,
    settings: FewShotSettings,
    *,
    seed: int,
    paraphrases: Mapping[str, Sequence[str]] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
) -> RecipeRun:
    """Train a fresh adapter by ``recipe`` (RecipeError if it is refused)."""
    t0 = time.perf_counter()
    plan = plan_recipe(bundle, task, recipe, settings, seed=seed, paraphrases=paraphrases)
    adapter = train_adapter(bundle, plan.examples, recipe, settings, seed=seed, on_step=on_step)
    return RecipeRun(plan, adapter, time.perf_counter() - t0)


def uses_paraphrases(task: FewShotTask, recipes: Sequence[Recipe | None]) -> bool:
    return domain_of(task) == "text" and any(r is not None and "paraphrase" in r.augmentations for r in recipes)
