"""Scoring many adapters at once: document questions and retention probes in shared batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seal_engine.config import EngineSettings
from seal_engine.core.grading import LLMJudge
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.documents import Question
from seal_engine.knowledge.qa import QAResult, answer_questions, grade_answers
from seal_engine.knowledge.retention import probe_accuracy, retention_subset


@dataclass
class AdapterScore:
    qa: QAResult
    retention: float | None = None


def score_adapters(
    bundle: ModelBundle,
    questions: Sequence[Question] | Sequence[Sequence[Question]],
    adapters: Sequence[LoraAdapter | None],
    settings: EngineSettings,
    *,
    judge: LLMJudge | None = None,
    with_retention: bool = True,
) -> list[AdapterScore]:
    """For each adapter (None = base model): its QA result and its retention.

    ``questions`` is one list shared by all adapters, or one list per adapter. Every
    answer of every adapter is decoded in the same batches.
    """
    per_adapter: list[Sequence[Question]]
    if questions and not isinstance(questions[0], Question):
        per_adapter = list(questions)  # type: ignore[arg-type]
        if len(per_adapter) != len(adapters):
            raise ValueError("one question list per adapter")
    else:
        per_adapter = [questions] * len(adapters)  # type: ignore[list-item]
    probes = retention_subset(bundle, settings) if with_retention else []
    texts: list[str] = []
    row_adapters: list[LoraAdapter | None] = []
    for qs, adapter in zip(per_adapter, adapters):
        items = [q.question for q in qs] + [p.question for p in probes]
        texts.extend(items)
        row_adapters.extend([adapter] * len(items))
    preds = answer_questions(bundle, texts, settings, adapters=row_adapters)
    scores: list[AdapterScore] = []
    pos = 0
    for qs in per_adapter:
        qa_preds = preds[pos : pos + len(qs)]
        probe_preds = preds[pos + len(qs) : pos + len(qs) + len(probes)]
        pos += len(qs) + len(probes)
        ret = None
        if with_retention:
            ret = probe_accuracy(probe_preds, probes)
        scores.append(AdapterScore(grade_answers(qs, qa_preds, judge), ret))
    return scores
