"""A dense learning signal: how much more likely an adapter makes the gold answers, asked as a chat user asks.

Graded answers are binary and few (5 questions of a passage: steps of 20 points), and decoding them costs
most of an evaluation. The log-likelihood gain of the gold answers is one teacher-forced forward: each
question rendered as one plain user turn (the serving path's template), its gold answer as the reply, and
the mean over the answers' tokens of log p_adapter - log p_base (nats per token; the reply's end token
is not scored, since a model that answers in sentences goes on after the name).
"""

from __future__ import annotations

from collections.abc import Sequence

from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.documents import Question
from seal_engine.training.sft import IGNORE


def answer_rows(bundle: ModelBundle, questions: Sequence[Question]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per question: the chat prompt's tokens, then the gold answer's (the only labels)."""
    from seal_engine.serving.completions import chat_prompt_ids

    rows = []
    for q in questions:
        prompt = chat_prompt_ids(bundle, [{"role": "user", "content": q.question}])
        answer = bundle.tokenizer(q.answer.strip(), add_special_tokens=False)["input_ids"]
        if answer:
            rows.append((prompt + answer, [IGNORE] * len(prompt) + answer))
    return rows


def answer_gains(bundle: ModelBundle, questions: Sequence[Question], adapters: Sequence[LoraAdapter],
                 *, batch_size: int = 16) -> list[float]:
    """Per adapter: the mean per-token log-likelihood gain (nats) of the questions' gold answers over
    the base model, every answer token weighing the same; all adapters and the base model share the
    forward passes. 0.0 for no answer tokens."""
    from seal_engine.serving.lora_slots import distinct_slots, serving
    from seal_engine.serving.scoring import token_nlls

    rows = answer_rows(bundle, questions)
    if not rows or not adapters:
        return [0.0] * len(adapters)
    unique, slot_of = distinct_slots(adapters)
    with serving(bundle, unique) as lora:  # the base model (slot -1), then each distinct adapter
        nlls = token_nlls(bundle, lora, [(slot, ids, labels) for slot in range(-1, len(unique))
                                         for ids, labels in rows], batch_size=batch_size)
    sums = [sum(float(t.sum()) for t in nlls[i * len(rows) : (i + 1) * len(rows)]) for i in range(len(unique) + 1)]
    tokens = sum(len(t) for t in nlls[: len(rows)])
    return [(sums[0] - sums[1 + slot]) / tokens for slot in slot_of]
