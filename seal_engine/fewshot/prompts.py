"""Prompts: solving a task from demonstrations, and writing a recipe for it.

Training episodes and test queries share one format, so what the adapter learns is
exactly what inference asks. Chat models get the chat template (short system message,
demonstrations + query as the user turn, the answer as the assistant turn); base models
get the same text as a plain completion prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from seal_engine.config import FewShotSettings
from seal_engine.fewshot import arc, text_tasks
from seal_engine.fewshot.arc import ArcPair, ArcTask
from seal_engine.fewshot.grids import Grid, grid_to_text
from seal_engine.fewshot.recipes import Domain, schema_text
from seal_engine.fewshot.text_tasks import TextPair, TextTask
from seal_engine.knowledge.prompts import Strategy, self_edit_prompt

if TYPE_CHECKING:
    from seal_engine.core.model import ModelBundle

SYSTEM = {
    "arc": "Each input grid becomes its output grid by the same rule. "
    "Write the output grid for the last input, one digit per cell.",
    "text": "Each input becomes its output by the same rule. Write the output for the last input.",
}

FewShotTask = ArcTask | TextTask


def domain_of(task: FewShotTask) -> Domain:
    return "arc" if isinstance(task, ArcTask) else "text"


def _wrap(bundle: ModelBundle, domain: Domain, user: str) -> str:
    if not bundle.is_chat:
        return f"{SYSTEM[domain]}\n\n{user}"
    messages = [{"role": "system", "content": SYSTEM[domain]}, {"role": "user", "content": user}]
    return bundle.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def arc_prompt(bundle: ModelBundle, demos: Sequence[ArcPair], query_input: Grid) -> str:
    return _wrap(bundle, "arc", arc.query_text(demos, query_input))


def text_prompt(bundle: ModelBundle, demos: Sequence[TextPair], query_input: str) -> str:
    return _wrap(bundle, "text", text_tasks.query_text(demos, query_input))


def arc_completion(grid: Grid) -> str:
    return grid_to_text(grid)


def text_completion(bundle: ModelBundle, output: str) -> str:
    # A base model continues "Output:" so its answer starts after a space.
    return output if bundle.is_chat else f" {output}"


def parse_text_answer(generated: str) -> str:
    """The answer is the first non-empty line of what the model wrote."""
    for line in generated.strip().split("\n"):
        if line.strip():
            return line.strip()
    return ""


# --- recipe writing ------------------------------------------------------------------

RESPONSE_PREFIX = '{"augmentations": ['
_TASK_CHARS = 6000  # the recipe writer sees at most this much of a task (whole pairs)


def recipe_strategy(domain: Domain, settings: FewShotSettings) -> Strategy:
    what = "grid puzzle" if domain == "arc" else "text task"
    instruction = (
        f"A small language model will be trained for a moment on the examples of a {what} "
        "below (test-time training), then asked to solve new inputs. Choose its training recipe.\n"
        + schema_text(domain, settings)
    )
    # The base-model template goes through str.format: escape the JSON braces.
    escaped = instruction.replace("{", "{{").replace("}", "}}")
    return Strategy(
        name=f"recipe-{domain}", instruction=instruction,
        base_template=escaped + "\n\n{title}\n{context}\n\nRecipe:\n",
        response_prefix=RESPONSE_PREFIX, split_lines=False,
    )


def task_summary(task: FewShotTask, max_chars: int = _TASK_CHARS) -> str:
    """The train pairs, as many whole pairs as fit in ``max_chars`` (the recipe prompt)."""
    fmt = arc.pair_text if isinstance(task, ArcTask) else text_tasks.pair_text
    parts: list[str] = []
    used = 0
    for p in task.train:
        t = fmt(p)
        if parts and used + len(t) > max_chars:
            parts.append(f"({len(task.train) - len(parts)} more examples not shown)\n")
            break
        parts.append(t)
        used += len(t)
    return "\n".join(parts)


def recipe_prompt(bundle: ModelBundle, task: FewShotTask, settings: FewShotSettings) -> str:
    """The text the recipe writer continues; it ends with :data:`RESPONSE_PREFIX`."""
    domain = domain_of(task)
    return self_edit_prompt(bundle, recipe_strategy(domain, settings), "Examples:", task_summary(task))
