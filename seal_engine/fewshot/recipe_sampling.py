"""Sampling recipes: N per task in one batched call, invalid ones re-drawn a bounded number of times."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seal_engine.config import FewShotSettings
from seal_engine.core.generation import generate
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.fewshot.constrained import allowed_tokens_fn, recipe_pattern
from seal_engine.fewshot.prompts import RESPONSE_PREFIX, FewShotTask, domain_of, recipe_prompt
from seal_engine.fewshot.recipes import Recipe, RecipeError, find_json_object, validate_recipe


@dataclass
class RecipeDraw:
    text: str  # what the writer produced (the response prefix included); the last try if all failed
    recipe: Recipe | None
    error: str | None  # why the last try was unusable; None when ``recipe`` is set
    tries: int

    @property
    def ok(self) -> bool:
        return self.recipe is not None


def parse_draw(text: str, task: FewShotTask, settings: FewShotSettings) -> RecipeDraw:
    """A draw from the writer's text; a valid one is cut right after its JSON object, so
    that what the policy is later fine-tuned on is the recipe, not the chatter after it."""
    try:
        data, _, end = find_json_object(text)
        return RecipeDraw(text[:end], validate_recipe(data, domain_of(task), settings), None, 1)
    except RecipeError as e:
        return RecipeDraw(text, None, e.reason, 1)


def sample_recipes(
    bundle: ModelBundle,
    tasks: Sequence[FewShotTask],
    n: int,
    settings: FewShotSettings,
    *,
    seed: int = 0,
    policy: LoraAdapter | None = None,
) -> list[tuple[str, list[RecipeDraw]]]:
    """(prompt, n draws) per task, written by ``policy`` (None: the base model).

    Round 0 samples every task's n recipes in one generate call; each later round
    (at most ``settings.max_resamples``) re-draws only the invalid ones, together.
    Constrained decoding (the default) only writes valid recipes, unless cut off by
    ``recipe_max_new_tokens``.
    """
    prompts = [recipe_prompt(bundle, t, settings) for t in tasks]
    patterns = {d: recipe_pattern(d, settings) for d in dict.fromkeys(domain_of(t) for t in tasks)}
    draws = [[RecipeDraw("", None, "not sampled", 0) for _ in range(n)] for _ in tasks]
    todo = [(i, k) for i in range(len(tasks)) for k in range(n)]
    for round_ in range(settings.max_resamples + 1):
        if not todo:
            break
        outs: dict[tuple[int, int], str] = {}
        # One generate call per domain: a call has one grammar.
        for domain, pattern in patterns.items():
            rows = [(i, k) for i, k in todo if domain_of(tasks[i]) == domain]
            if not rows:
                continue
            constrain = allowed_tokens_fn(bundle, pattern) if settings.recipe_decoding == "constrained" else None
            texts = generate(
                bundle, [prompts[i] for i, _ in rows], max_new_tokens=settings.recipe_max_new_tokens,
                temperature=settings.recipe_temperature, top_p=settings.recipe_top_p, seed=seed + 7919 * round_,
                batch_size=max(1, min(len(rows), settings.generation_batch_size * 4)),
                adapters=[policy] * len(rows) if policy is not None else None, allowed_tokens=constrain,
            )
            outs.update(zip(rows, texts))
        still = []
        for (i, k) in todo:
            out = outs[(i, k)]
            draw = parse_draw(RESPONSE_PREFIX + out, tasks[i], settings)
            draw.tries = round_ + 1
            draws[i][k] = draw
            if not draw.ok:
                still.append((i, k))
        todo = still
    return list(zip(prompts, draws))
