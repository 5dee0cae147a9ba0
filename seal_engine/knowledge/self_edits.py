"""Sampling self-edits: the model writes its own training data for a document."""

from __future__ import annotations

from collections.abc import Callable

from seal_engine.config import SamplingSettings
from seal_engine.core.generation import generate
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.documents import Document
from seal_engine.knowledge.parsing import build_training_sequences
from seal_engine.knowledge.prompts import Strategy, self_edit_prompt


def sample_self_edits_many(
    bundle: ModelBundle,
    items: list[tuple[Document, Strategy | None]],
    k: int,
    sampling: SamplingSettings,
    *,
    seed: int = 0,
    policy: LoraAdapter | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[tuple[str, list[str]]]:
    """(prompt, k self-edits) for each (document, strategy), all sampled in one batched call.

    ``policy``: a self-edit policy adapter (from RL) that writes the self-edits; None
    samples from the base model.
    """
    prompts = [self_edit_prompt(bundle, s, d.title, d.text) if s else "" for d, s in items]
    todo = [p for p in prompts if p for _ in range(k)]
    outs = generate(
        bundle, todo, max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p, seed=seed, batch_size=max(len(todo), 1),
        adapters=[policy] * len(todo) if policy is not None else None, on_token=on_token,
    ) if todo else []
    results: list[tuple[str, list[str]]] = []
    pos = 0
    for prompt, (_, strategy) in zip(prompts, items):
        if not prompt or strategy is None:
            results.append(("", []))
            continue
        results.append((prompt, [strategy.response_prefix + o for o in outs[pos : pos + k]]))
        pos += k
    return results


def training_sequences(document: Document, strategy: Strategy | None, self_edits: list[str]) -> list[str]:
    """All sequences for one adapter: every self-edit's lines, deduplicated, plus the passage."""
    split = strategy.split_lines if strategy else True
    seqs: list[str] = []
    for edit in self_edits or [None]:
        for s in build_training_sequences(edit, document.text, document.title, split_lines=split):
            if s not in seqs:
                seqs.append(s)
    return seqs
