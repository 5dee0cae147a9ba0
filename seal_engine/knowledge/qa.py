"""Closed-book question answering and its grading (no passage in context)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from seal_engine.config import EngineSettings
from seal_engine.core.generation import generate
from seal_engine.core.grading import OFFLINE_GRADERS, JudgeError, LLMJudge, grade_offline
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.documents import Question
from seal_engine.knowledge.prompts import answer_prompt

if TYPE_CHECKING:
    from seal_engine.serving.completions import Completion


def answer_questions(
    bundle: ModelBundle,
    questions: Sequence[str],
    settings: EngineSettings,
    adapter: LoraAdapter | None = None,
    *,
    adapters: Sequence[LoraAdapter | None] | None = None,
) -> list[str]:
    """Greedy, batched answers without the passage.

    Under ``adapter`` for all questions, or ``adapters[i]`` for question i: questions
    for different adapters share batches (one forward per decoding step).
    """
    if not questions:
        return []
    if adapters is None:
        adapters = [adapter] * len(questions)
    prompts = [answer_prompt(bundle, q) for q in questions]
    raw = generate(
        bundle,
        prompts,
        max_new_tokens=settings.answer_max_new_tokens,
        batch_size=settings.answer_batch_size,
        stop=("\n",) if not bundle.is_chat else (),
        adapters=adapters,
    )
    return [r.strip() for r in raw]


@dataclass
class QAResult:
    """Per-question predictions and grades, plus mean accuracy per grader."""

    predictions: list[str]
    grades: list[dict[str, float]]
    accuracy: dict[str, float] = field(default_factory=dict)
    judge_error: str | None = None

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "predictions": self.predictions,
            "grades": self.grades,
            "judge_error": self.judge_error,
        }


def grade_answers(
    questions: Sequence[Question],
    predictions: Sequence[str],
    judge: LLMJudge | None = None,
) -> QAResult:
    grades = [grade_offline(p, q.answer) for p, q in zip(predictions, questions)]
    judge_error = None
    if judge is not None:
        try:
            verdicts = judge.grade_many([q.question for q in questions], predictions, [q.answer for q in questions])
            for g, v in zip(grades, verdicts):
                g["judge"] = float(v)
        except JudgeError as e:
            judge_error = str(e)
    names = list(OFFLINE_GRADERS) + (["judge"] if judge is not None and judge_error is None else [])
    n = max(len(grades), 1)
    accuracy = {k: sum(g[k] for g in grades) / n for k in names} if grades else {k: 0.0 for k in names}
    return QAResult(list(predictions), grades, accuracy, judge_error)


def chat_completions(
    bundle: ModelBundle,
    questions: Sequence[str],
    adapters: Sequence[LoraAdapter | None],
    *,
    max_tokens: int,
    batch_size: int = 64,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[Completion]:
    """Greedy replies to ``questions`` asked exactly as ``/v1/chat/completions`` asks them: one
    plain user turn (no system prompt) in the model's own template, decoded by the serving
    decoder with ``adapters[i]`` on question i (the same prompt tokens and kernels)."""
    from seal_engine.serving.completions import CompletionRequest, chat_prompt_ids, complete

    if len(adapters) != len(questions):
        raise ValueError("one adapter (or None) per question")
    requests = [CompletionRequest(prompt=chat_prompt_ids(bundle, [{"role": "user", "content": q}]), adapter=a,
                                  max_tokens=max_tokens, temperature=0.0) for q, a in zip(questions, adapters)]
    out: list[Completion] = []
    for i in range(0, len(requests), batch_size):
        out.extend(c[0] for c in complete(bundle, requests[i : i + batch_size]))
        if on_batch:
            on_batch(len(out), len(requests))
    return out


def chat_answers(bundle: ModelBundle, questions: Sequence[str], adapters: Sequence[LoraAdapter | None], *,
                 max_tokens: int, batch_size: int = 64, on_batch: Callable[[int, int], None] | None = None) -> list[str]:
    """The texts of :func:`chat_completions`, stripped."""
    return [c.text.strip() for c in chat_completions(bundle, questions, adapters, max_tokens=max_tokens,
                                                     batch_size=batch_size, on_batch=on_batch)]
