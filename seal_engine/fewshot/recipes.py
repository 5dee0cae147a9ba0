"""Recipes: the self-edit of few-shot adaptation, a small JSON training plan.

``{"augmentations": [...], "loss": "all"|"output", "learning_rate": 0.001, "epochs": 3}``
(optionally ``"max_examples"``). The model writes one in free text; :func:`parse_recipe`
finds the JSON object, validates it and raises :class:`RecipeError` with a reason a
person (or a log) can read. Recipes whose training would exceed the step budget are
refused by :func:`check_budget`.
"""

from __future__ import annotations

import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from seal_engine.config import FewShotSettings
from seal_engine.errors import InputError
from seal_engine.fewshot.augment import ARC_GROUPS

Domain = Literal["arc", "text"]

GROUPS: dict[str, dict[str, str]] = {
    "arc": {name: desc for name, (desc, _) in ARC_GROUPS.items()},
    "text": {
        "paraphrase": "the examples again with their inputs reworded by the model (outputs unchanged)",
        "reorder": "the examples again in two more random orders",
    },
}
FIELDS = ("augmentations", "loss", "learning_rate", "epochs", "max_examples")
REQUIRED = ("augmentations", "loss", "learning_rate", "epochs")


class RecipeError(InputError):
    """An unusable recipe; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    augmentations: tuple[str, ...] = ()
    loss: Literal["all", "output"] = "output"
    learning_rate: float = 1e-3
    epochs: int = 3
    max_examples: int | None = None

    def to_json(self) -> str:
        data = self.model_dump(exclude_none=True)
        data["augmentations"] = list(self.augmentations)
        return json.dumps(data)


def find_json_object(text: str) -> tuple[dict, int, int]:
    """The first JSON object in ``text`` and its [start, end) span; chatter and code
    fences around it are ignored. RecipeError when there is none."""
    decoder = json.JSONDecoder()
    first_error = None
    for i, ch in enumerate(text):
        if ch != "{":
            continue
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            first_error = first_error or e
            continue
        if isinstance(obj, dict):
            return obj, i, end
    if first_error is not None:
        raise RecipeError(f"invalid JSON: {first_error.msg} at character {first_error.pos}")
    raise RecipeError("no JSON object found")


def extract_json_object(text: str) -> dict:
    return find_json_object(text)[0]


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_recipe(data: object, domain: Domain, settings: FewShotSettings) -> Recipe:
    """A Recipe from parsed JSON, or RecipeError naming the first problem."""
    if not isinstance(data, dict):
        raise RecipeError("the recipe is not a JSON object")
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise RecipeError(f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise RecipeError(f"missing field {missing[0]!r}")
    groups = GROUPS[domain]
    augs = data["augmentations"]
    if not isinstance(augs, list) or not all(isinstance(a, str) for a in augs):
        raise RecipeError("augmentations must be a list of group names")
    for a in augs:
        if a not in groups:
            raise RecipeError(f"unknown augmentation group {a!r} (choose from {', '.join(groups)})")
    if data["loss"] not in ("all", "output"):
        raise RecipeError(f'loss must be "all" or "output", not {data["loss"]!r}')
    lr = data["learning_rate"]
    if not _number(lr) or not settings.lr_min <= lr <= settings.lr_max:
        raise RecipeError(f"learning_rate {lr!r} is outside [{settings.lr_min:g}, {settings.lr_max:g}]")
    ep = data["epochs"]
    if not _number(ep) or ep != int(ep) or not 1 <= ep <= settings.max_epochs:
        raise RecipeError(f"epochs {ep!r} is not a whole number in [1, {settings.max_epochs}]")
    mx = data.get("max_examples")
    if mx is not None and (not _number(mx) or mx != int(mx) or not 1 <= mx <= settings.max_examples):
        raise RecipeError(f"max_examples {mx!r} is not a whole number in [1, {settings.max_examples}]")
    return Recipe(
        augmentations=tuple(dict.fromkeys(augs)), loss=data["loss"], learning_rate=float(lr), epochs=int(ep),
        max_examples=int(mx) if mx is not None else None,
    )


def parse_recipe(text: str, domain: Domain, settings: FewShotSettings) -> Recipe:
    """The recipe in a model's output; RecipeError (with ``reason``) when there is none usable."""
    return validate_recipe(extract_json_object(text), domain, settings)


def example_limit(recipe: Recipe, settings: FewShotSettings) -> int:
    return min(recipe.max_examples or settings.max_examples, settings.max_examples)


def recipe_steps(recipe: Recipe, n_examples: int, batch_size: int) -> int:
    """Optimizer steps the recipe takes on ``n_examples`` training episodes."""
    return recipe.epochs * math.ceil(n_examples / batch_size)


def check_budget(recipe: Recipe, n_examples: int, settings: FewShotSettings) -> int:
    """The recipe's step count; RecipeError when it exceeds the budget."""
    steps = recipe_steps(recipe, n_examples, settings.batch_size)
    if steps > settings.step_budget:
        raise RecipeError(
            f"the recipe needs {steps} training steps ({recipe.epochs} epochs x {n_examples} examples "
            f"in batches of {settings.batch_size}), over the budget of {settings.step_budget}"
        )
    return steps


def default_recipe(domain: Domain) -> Recipe:
    """The fixed recipe that the written ones are compared against."""
    if domain == "arc":
        return Recipe(augmentations=("basic",), loss="output", learning_rate=1e-3, epochs=2)
    return Recipe(augmentations=(), loss="output", learning_rate=1e-3, epochs=4)


def schema_text(domain: Domain, settings: FewShotSettings) -> str:
    """The recipe format, for the recipe-writing prompt."""
    groups = "\n".join(f'- "{name}": {desc}' for name, desc in GROUPS[domain].items())
    if settings.recipe_decoding == "constrained":
        rates = "one of " + ", ".join(json.dumps(r) for r in settings.recipe_learning_rates)
    else:
        rates = f"number from {settings.lr_min:g} to {settings.lr_max:g}"
    return (
        "Reply with one JSON object:\n"
        '{"augmentations": [group names], "loss": "all" or "output", '
        f'"learning_rate": {rates}, '
        f'"epochs": whole number from 1 to {settings.max_epochs}}}\n'
        f"Augmentation groups:\n{groups}\n"
        '"loss": "output" trains on the answers only, "all" on the whole examples.'
    )
