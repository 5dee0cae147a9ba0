"""Few-shot recipes in the shape of the knowledge RL loop (:mod:`seal_engine.rl.loop` dispatches here for ``text`` and ``arc`` runs).

- :func:`sample_task_recipes` ~ ``rl.sample_iteration``: (prompt, N recipe texts) per task.
- :func:`evaluate_task_recipes` ~ ``rl.evaluate_passage_samples``: one task's N recipes
  executed and graded -> a ``PassageResult`` whose ``baseline_accuracy`` is in-context
  only, ``passage_accuracy``/``passage_reward`` the fixed default recipe, and whose
  samples carry reward 1/0 (ARC solved, pass@2) or held-out accuracy (text). A recipe
  that is invalid or refused gets reward 0 and its reason in ``error``.
- :func:`recipe_completion`: the completion the writer is fine-tuned on for a kept recipe.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from seal_engine.config import FewShotSettings
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.fewshot.execute import RecipeRun, execute_recipe, uses_paraphrases
from seal_engine.fewshot.inference import ArcOutcome, Outcome, run_jobs
from seal_engine.fewshot.paraphrase import paraphrase_inputs
from seal_engine.fewshot.prompts import RESPONSE_PREFIX, FewShotTask, domain_of
from seal_engine.fewshot.recipe_sampling import RecipeDraw, parse_draw, sample_recipes
from seal_engine.fewshot.recipes import Recipe, RecipeError, default_recipe, find_json_object
from seal_engine.rl.results import PassageResult, RecipeSampleResult


def recipe_seed(seed: int, task_index: int, sample: int) -> int:
    return seed + 1000 * task_index + 10 * sample


def sample_task_recipes(
    bundle: ModelBundle,
    tasks: Sequence[FewShotTask],
    n: int,
    settings: FewShotSettings,
    *,
    seed: int = 0,
    policy: LoraAdapter | None = None,
) -> list[tuple[str, list[str]]]:
    """(prompt, N recipe texts) per task, by ``policy`` (None: the base model); invalid
    recipes were re-drawn up to ``settings.max_resamples`` times, the last try is kept."""
    return [(p, [d.text for d in draws]) for p, draws in sample_recipes(bundle, tasks, n, settings, seed=seed,
                                                                        policy=policy)]


def _score(outcome: Outcome) -> tuple[float, float]:
    """(reward, accuracy): ARC reward is solved 1/0, accuracy the share of test inputs right."""
    if isinstance(outcome, ArcOutcome):
        return outcome.reward, outcome.reward
    return outcome.accuracy, outcome.accuracy


def _run(bundle: ModelBundle, task: FewShotTask, recipe: Recipe, settings: FewShotSettings, seed: int,
         paraphrases: dict | None) -> RecipeRun | str:
    try:
        return execute_recipe(bundle, task, recipe, settings, seed=seed, paraphrases=paraphrases)
    except RecipeError as e:
        return e.reason


@dataclass
class TaskEvaluation:
    result: PassageResult
    default: RecipeSampleResult  # the fixed default recipe, as a sample (sample index -1)
    outcomes: list[Outcome]  # in-context, default, then each executed recipe


def _sample(task_index: int, k: int, prompt: str, draw: RecipeDraw, run: RecipeRun | str, seed: int,
            outcome: Outcome | None) -> RecipeSampleResult:
    reward, acc = _score(outcome) if outcome is not None else (0.0, 0.0)
    ok = isinstance(run, RecipeRun)
    return RecipeSampleResult(
        passage=task_index, sample=k, prompt=prompt, text=draw.text, seeds=[seed],
        rewards=[{"reward": reward, "accuracy": acc}], reward=reward, adapted_accuracy=acc, retention=None,
        error=None if ok else run, recipe=draw.recipe.model_dump() if draw.recipe else None,
        steps=run.plan.steps if ok else 0, examples=len(run.plan.examples) if ok else 0,
        train_seconds=run.seconds if ok else 0.0,
    )


def evaluate_task(
    bundle: ModelBundle,
    task: FewShotTask,
    task_index: int,
    prompt: str,
    recipe_texts: Sequence[str],
    settings: FewShotSettings,
    *,
    seed: int = 0,
) -> TaskEvaluation:
    """Execute and grade one task's recipes, its default recipe and its in-context baseline.

    Adapters train one after another; all of them (plus no adapter) answer the task's
    held-out inputs in shared generation batches.
    """
    t0 = time.perf_counter()
    draws: list[RecipeDraw] = [parse_draw(t, task, settings) for t in recipe_texts]
    default = default_recipe(domain_of(task))
    paraphrases = None
    if uses_paraphrases(task, [default, *(d.recipe for d in draws)]) and settings.paraphrases:
        paraphrases = paraphrase_inputs(bundle, [p.input for p in task.train], settings.paraphrases,
                                        seed=recipe_seed(seed, task_index, 98))
    seeds = [recipe_seed(seed, task_index, 99)] + [recipe_seed(seed, task_index, k) for k in range(len(draws))]
    default_draw = RecipeDraw(default.to_json(), default, None, 0)
    runs: list[RecipeRun | str] = [_run(bundle, task, default, settings, seeds[0], paraphrases)]
    for d, sd in zip(draws, seeds[1:]):
        runs.append(_run(bundle, task, d.recipe, settings, sd, paraphrases) if d.recipe else d.error or "invalid")
    adapters = [None, *(r.adapter if isinstance(r, RecipeRun) else None for r in runs)]
    todo = [i for i, a in enumerate(adapters) if i == 0 or a is not None]
    graded = dict(zip(todo, run_jobs(bundle, [(task, adapters[i]) for i in todo], settings)))
    default_sample = _sample(task_index, -1, prompt, default_draw, runs[0], seeds[0], graded.get(1))
    result = PassageResult(
        passage=task_index, title=task.name, baseline_accuracy=_score(graded[0])[0], baseline_retention=None,
        passage_accuracy=default_sample.adapted_accuracy, passage_reward=default_sample.reward,
    )
    for k, draw in enumerate(draws):
        result.samples.append(_sample(task_index, k, prompt, draw, runs[1 + k], seeds[1 + k], graded.get(2 + k)))
    result.seconds = time.perf_counter() - t0
    return TaskEvaluation(result, default_sample, [graded[i] for i in todo])


def evaluate_task_recipes(
    bundle: ModelBundle,
    task: FewShotTask,
    task_index: int,
    prompt: str,
    recipe_texts: Sequence[str],
    settings: FewShotSettings,
    *,
    seed: int = 0,
) -> PassageResult:
    """The rewards of one task's recipes (see :func:`evaluate_task`), as the RL loop stores them:
    baseline = in-context only, passage = the default recipe, samples = the recipes."""
    return evaluate_task(bundle, task, task_index, prompt, recipe_texts, settings, seed=seed).result


def recipe_completion(text: str) -> str:
    """What the recipe writer is fine-tuned to produce after its prompt (which ends with the
    response prefix): the rest of ``text``, or the canonical JSON of the recipe in it when the
    writer's text did not start with the prefix."""
    if text.startswith(RESPONSE_PREFIX):
        return text[len(RESPONSE_PREFIX):]
    data, _, _ = find_json_object(text)
    return Recipe(**data).to_json()[len(RESPONSE_PREFIX):]
