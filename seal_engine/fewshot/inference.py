"""Answering a task's test inputs (with or without an adapter) and grading the answers.

ARC: every test input is asked under several geometric views (the train pairs and the
input transformed alike), each answer is parsed and mapped back by the inverse view,
and a vote keeps ``attempts`` answers (pass@2). Text: one greedy answer per held-out
input, exact match. All (task, adapter) jobs of a call share batched generation, each
row under its own adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from seal_engine.config import FewShotSettings
from seal_engine.core.generation import generate
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.fewshot.arc import ArcTask
from seal_engine.fewshot.augment import NotInvertible, geometric
from seal_engine.fewshot.grids import MAX_SIDE, Grid, text_to_grid, text_tokens
from seal_engine.fewshot.prompts import FewShotTask, arc_prompt, parse_text_answer, text_prompt
from seal_engine.fewshot.text_tasks import TextTask
from seal_engine.fewshot.voting import exact_match, solved, vote

Job = tuple[FewShotTask, LoraAdapter | None]


@dataclass
class ArcOutcome:
    attempts: list[list[Grid]]  # per test input, at most ``attempts`` grids
    solved: bool | None  # None when the task has no known test outputs
    raw: list[list[str]] = field(default_factory=list)  # per test input, the text of each view

    @property
    def reward(self) -> float:
        return 1.0 if self.solved else 0.0


@dataclass
class TextOutcome:
    answers: list[str]
    correct: list[bool]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    @property
    def reward(self) -> float:
        return self.accuracy


Outcome = ArcOutcome | TextOutcome


def _generate(bundle: ModelBundle, prompts: list[str], adapters: list[LoraAdapter | None], max_new: int,
              settings: FewShotSettings, stop: Sequence[str]) -> list[str]:
    """Greedy completions, batched by prompt length (less padding), returned in input order."""
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outs = generate(
        bundle, [prompts[i] for i in order], max_new_tokens=max_new, batch_size=settings.generation_batch_size,
        stop=stop, adapters=[adapters[i] for i in order] if any(a is not None for a in adapters) else None,
    )
    result = [""] * len(prompts)
    for i, o in zip(order, outs):
        result[i] = o
    return result


def arc_answer_tokens(task: ArcTask) -> int:
    """A generation bound: a little over the largest grid the task shows (at most 30x30)."""
    largest = max(text_tokens(g) for g in (*(p.output for p in task.train), *task.test_inputs))
    return min(int(largest * 1.25) + 8, MAX_SIDE * (MAX_SIDE + 1))


def solve_arc(bundle: ModelBundle, jobs: Sequence[tuple[ArcTask, LoraAdapter | None]],
              settings: FewShotSettings) -> list[ArcOutcome]:
    rows: list[tuple[int, int, str]] = []  # (job, test input, view)
    prompts: list[str] = []
    adapters: list[LoraAdapter | None] = []
    for j, (task, adapter) in enumerate(jobs):
        for t, test_input in enumerate(task.test_inputs):
            for op in settings.inference_transforms:
                view = geometric(op)
                rows.append((j, t, op))
                prompts.append(arc_prompt(bundle, [p.map(view) for p in task.train], view(test_input)))
                adapters.append(adapter)
    if not prompts:
        return []
    max_new = max(arc_answer_tokens(task) for task, _ in jobs)
    outs = _generate(bundle, prompts, adapters, max_new, settings, stop=("\n\n",))
    answers: list[list[list[Grid | None]]] = [[[] for _ in task.test_inputs] for task, _ in jobs]
    raw: list[list[list[str]]] = [[[] for _ in task.test_inputs] for task, _ in jobs]
    for (j, t, op), text in zip(rows, outs):
        raw[j][t].append(text)
        grid = text_to_grid(text)
        try:
            answers[j][t].append(geometric(op).invert(grid) if grid is not None else None)
        except NotInvertible:  # cannot happen for the square's symmetries; kept for safety
            answers[j][t].append(None)
    results = []
    for j, (task, _) in enumerate(jobs):
        attempts = [vote(a, settings.attempts) for a in answers[j]]
        ok = solved(attempts, task.test_outputs) if task.test_outputs is not None else None
        results.append(ArcOutcome(attempts, ok, raw[j]))
    return results


def answer_text(bundle: ModelBundle, jobs: Sequence[tuple[TextTask, LoraAdapter | None]],
                settings: FewShotSettings) -> list[TextOutcome]:
    prompts, adapters, owner = [], [], []
    for j, (task, adapter) in enumerate(jobs):
        for pair in task.test:
            prompts.append(text_prompt(bundle, task.train, pair.input))
            adapters.append(adapter)
            owner.append(j)
    outs = _generate(bundle, prompts, adapters, settings.text_max_new_tokens, settings, stop=()) if prompts else []
    results = [TextOutcome([], []) for _ in jobs]
    for j, text in zip(owner, outs):
        results[j].answers.append(parse_text_answer(text))
    for j, (task, _) in enumerate(jobs):
        results[j].correct = [exact_match(a, p.output) for a, p in zip(results[j].answers, task.test)]
    return results


def run_jobs(bundle: ModelBundle, jobs: Sequence[Job], settings: FewShotSettings) -> list[Outcome]:
    """Outcomes for mixed ARC and text jobs, in order (one generation pass per domain)."""
    arc_idx = [i for i, (t, _) in enumerate(jobs) if isinstance(t, ArcTask)]
    text_idx = [i for i, (t, _) in enumerate(jobs) if not isinstance(t, ArcTask)]
    out: list[Outcome | None] = [None] * len(jobs)
    for i, o in zip(arc_idx, solve_arc(bundle, [jobs[i] for i in arc_idx], settings)):  # type: ignore[misc]
        out[i] = o
    for i, o in zip(text_idx, answer_text(bundle, [jobs[i] for i in text_idx], settings)):  # type: ignore[misc]
        out[i] = o
    return out  # type: ignore[return-value]
