"""Self-distillation replay: the base model's own chat answers, mixed into an adapter's training data.

Training on a document moves the model everywhere; training at the same time to give the
answers the base model gives to generic requests holds it in place where the document has
nothing to say. The data is the model's own (no outside data, any configured model), from
the *gate* half of the generic prompts only (:mod:`seal_engine.knowledge.forgetting`): the
report half, and every probe, stay unseen by training.
"""

from __future__ import annotations

from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.chat_format import user_turn
from seal_engine.knowledge.forgetting import generic_prompts
from seal_engine.knowledge.qa import chat_completions

# Replies longer than this are left out: a cut reply would be trained to end mid-sentence.
REPLAY_MAX_TOKENS = 160

_cache: dict[tuple, list[tuple[str, str]]] = {}


def replay_examples(bundle: ModelBundle, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` (prompt, base-model reply) pairs, computed once per process and model."""
    if n <= 0:
        return []
    key = (bundle.model_id, id(bundle))
    if key not in _cache:
        prompts = generic_prompts("gate")
        replies = chat_completions(bundle, prompts, [None] * len(prompts), max_tokens=REPLAY_MAX_TOKENS)
        _cache[key] = [(user_turn(bundle, p), c.text.strip()) for p, c in zip(prompts, replies)
                       if c.finish_reason == "stop" and c.text.strip()]
    return _cache[key][:n]
