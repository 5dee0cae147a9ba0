"""Few-shot task adaptation end to end: recipe(s) -> test-time training -> grades -> adapter.

What a ``POST /v1/tasks`` job runs (and ``bench/fewshot.py`` measures per piece): the
model (or an RL-trained recipe writer) writes k training recipes for the task; each
valid one is executed (a LoRA trained on augmented leave-n-out episodes of the task's
examples). With held-out examples (``test`` pairs with outputs), every executed recipe
is graded and the best one is kept, and the in-context baseline is reported beside it;
without, the first valid recipe is kept. When no written recipe is valid, the fixed
default recipe is used and the reasons are recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from seal_engine.config import FewShotSettings
from seal_engine.core.lora import LoraAdapter, TrainedAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.errors import InputError
from seal_engine.fewshot.arc import ArcTask
from seal_engine.fewshot.datasets import task_to_dict
from seal_engine.fewshot.execute import RecipeRun, execute_recipe, uses_paraphrases
from seal_engine.fewshot.inference import run_jobs
from seal_engine.fewshot.paraphrase import paraphrase_inputs
from seal_engine.fewshot.prompts import SYSTEM, FewShotTask, domain_of
from seal_engine.fewshot.recipe_sampling import sample_recipes
from seal_engine.fewshot.recipes import Recipe, RecipeError, default_recipe
from seal_engine.fewshot.text_tasks import TextPair, TextTask

Progress = Callable[[str, int, int], None]
MAX_RECIPES = 16


@dataclass
class TaskAdaptationResult:
    strategy: str  # "recipe-text" or "recipe-arc": what kind of self-edit wrote the data
    task: FewShotTask
    prompts: list[str]
    self_edits: list[str]  # the recipe texts as written
    recipe: Recipe  # the recipe the adapter was trained with
    recipe_source: str  # "written", "given" or "default"
    adapter: TrainedAdapter
    candidates: list[dict] = field(default_factory=list)  # every recipe: validity, reason, held-out score
    in_context: float | None = None
    adapted: float | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict:
        out: dict = {
            "task": self.task.name, "domain": domain_of(self.task), "recipe": self.recipe.model_dump(),
            "recipe_source": self.recipe_source, "candidates": self.candidates,
            "train_loss_first": self.adapter.losses[0] if self.adapter.losses else None,
            "train_loss_last": self.adapter.losses[-1] if self.adapter.losses else None,
            "train_examples": self.adapter.num_sequences, "timings": self.timings,
        }
        if self.adapted is not None:
            out["heldout"] = {"in_context": self.in_context, "adapted": self.adapted,
                              "metric": "solved (pass@2)" if isinstance(self.task, ArcTask) else "exact match"}
        return out

    def record(self) -> dict:
        return json.loads(json.dumps({
            "strategy": self.strategy, "prompts": self.prompts, "self_edits": self.self_edits,
            "task": task_to_dict(self.task), "lora": self.adapter.config.to_dict(), "seed": self.adapter.seed,
            "losses": self.adapter.losses, "metrics": self.metrics(),
            "prompt_format": prompt_format(self.task),
        }, default=str))


def prompt_format(task: FewShotTask) -> dict:
    """How to query the adapter through the OpenAI-compatible endpoints: the solver's
    system message and the user turn (demonstrations, then the query)."""
    from seal_engine.fewshot import arc as arc_text
    from seal_engine.fewshot import text_tasks

    domain = domain_of(task)
    user = (arc_text.query_text(task.train, task.test_inputs[0]) if isinstance(task, ArcTask)
            else text_tasks.query_text(task.train, "<input>"))
    return {"system": SYSTEM[domain], "user_example": user}


def _has_heldout(task: FewShotTask) -> bool:
    return task.test_outputs is not None if isinstance(task, ArcTask) else bool(task.test)


def adapt_task(
    bundle: ModelBundle,
    task: FewShotTask,
    settings: FewShotSettings,
    *,
    k: int = 1,
    recipe: Recipe | None = None,
    policy: LoraAdapter | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> TaskAdaptationResult:
    """An adapter for ``task``: from the given ``recipe``, or from k recipes written by
    ``policy`` (None: the base model)."""
    if not 1 <= k <= MAX_RECIPES:
        raise InputError(f"k (recipes per task) must be between 1 and {MAX_RECIPES}")
    report = progress or (lambda *_: None)
    domain = domain_of(task)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    report("self_edits", 0, 1)
    if recipe is not None:
        prompts, texts, recipes, reasons, source = [], [recipe.to_json()], [recipe], [None], "given"
    else:
        [(prompt, draws)] = sample_recipes(bundle, [task], k, settings, seed=seed, policy=policy)
        prompts, texts = [prompt], [d.text for d in draws]
        recipes, reasons, source = [d.recipe for d in draws], [d.error for d in draws], "written"
    report("self_edits", 1, 1)
    timings["self_edits_s"] = time.perf_counter() - t

    t = time.perf_counter()
    paraphrases = None
    if settings.paraphrases and uses_paraphrases(task, recipes):
        paraphrases = paraphrase_inputs(bundle, [p.input for p in task.train], settings.paraphrases, seed=seed + 98)
    grade_all = _has_heldout(task)
    runs: list[RecipeRun | None] = []
    for i, r in enumerate(recipes):
        if r is None or (runs and any(runs) and not grade_all):
            runs.append(None)  # invalid, or a recipe already ran and there is nothing to choose by
            continue
        try:
            runs.append(execute_recipe(bundle, task, r, settings, seed=seed + i, paraphrases=paraphrases,
                                       on_step=lambda s, n, _l: report("training", s, n)))
        except RecipeError as e:
            reasons[i] = e.reason
            runs.append(None)
    if not any(runs) and source == "given":
        raise RecipeError(f"the given recipe cannot be used: {reasons[0]}")
    candidate_texts = list(texts)
    if not any(runs):
        default = default_recipe(domain)
        recipes.append(default)
        candidate_texts.append(default.to_json())
        reasons.append(None)
        runs.append(execute_recipe(bundle, task, default, settings, seed=seed, paraphrases=paraphrases,
                                   on_step=lambda s, n, _l: report("training", s, n)))
        source = "default"
    timings["training_s"] = time.perf_counter() - t

    candidates = [{"text": text, "valid": r is not None, "executed": run is not None, "reason": reason}
                  for text, r, run, reason in zip(candidate_texts, recipes, runs, reasons)]
    executed = [i for i, r in enumerate(runs) if r is not None]
    chosen = executed[0]
    result = TaskAdaptationResult(f"recipe-{domain}", task, prompts, texts, recipes[chosen], source,
                                  runs[chosen].adapter, candidates, timings=timings)  # type: ignore[union-attr]
    if grade_all:
        t = time.perf_counter()
        report("evaluation", 0, 1)
        outcomes = run_jobs(bundle, [(task, None)] + [(task, runs[i].adapter) for i in executed], settings)  # type: ignore[union-attr]
        scores = [o.reward for o in outcomes]  # ARC: solved (pass@2) 1/0; text: held-out accuracy
        for i, score in zip(executed, scores[1:]):
            candidates[i]["heldout"] = score
        best = max(range(len(executed)), key=lambda j: (scores[1 + j], -j))
        chosen = executed[best]
        result.recipe, result.adapter = recipes[chosen], runs[chosen].adapter  # type: ignore[union-attr,assignment]
        result.in_context, result.adapted = scores[0], scores[1 + best]
        report("evaluation", 1, 1)
        timings["evaluation_s"] = time.perf_counter() - t
    return result


def solve(bundle: ModelBundle, task: FewShotTask, adapter: LoraAdapter | None, inputs: Sequence,
          settings: FewShotSettings) -> list:
    """Answers for new inputs of ``task``: for ARC up to ``settings.attempts`` grids per
    input (voted over the inference transforms), for text one string per input."""
    if isinstance(task, ArcTask):
        from seal_engine.fewshot.grids import as_grid

        query = replace(task, test_inputs=tuple(as_grid(g) for g in inputs), test_outputs=None)
        [outcome] = run_jobs(bundle, [(query, adapter)], settings)
        return [[[list(row) for row in g] for g in attempts] for attempts in outcome.attempts]  # type: ignore[union-attr]
    query = TextTask(task.name, task.train, tuple(TextPair(str(x), "") for x in inputs))
    [outcome] = run_jobs(bundle, [(query, adapter)], settings)
    return list(outcome.answers)  # type: ignore[union-attr]


def save_task_result(result: TaskAdaptationResult, out_dir: str | Path) -> Path:
    out = result.adapter.save(out_dir)
    (out / "seal_record.json").write_text(json.dumps(result.record(), indent=2))
    return out
