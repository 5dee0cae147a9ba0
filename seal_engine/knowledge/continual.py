"""Continual mode: learn documents one after another, merging each adapter into the weights.

Step j writes self-edits for document j with the model as it is after steps 0..j-1
(the model keeps writing its own data), trains a LoRA on them, and merges it into a
private copy of the base weights. After every step all documents' questions are
graded, giving the accuracy matrix ``acc[j][i]`` (document i after step j; row 0 is
before any step), so forgetting of earlier documents is visible, and retention on the
general probes is tracked alongside.
"""

from __future__ import annotations

import copy
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from peft import set_peft_model_state_dict

from seal_engine.config import EngineSettings
from seal_engine.core.grading import OFFLINE_GRADERS
from seal_engine.core.lora import AdapterError, LoraAdapter, peft_model
from seal_engine.core.model import ModelBundle
from seal_engine.errors import InputError
from seal_engine.knowledge.documents import Document
from seal_engine.knowledge.evaluation import score_adapters
from seal_engine.knowledge.prompts import get_strategy
from seal_engine.knowledge.self_edits import sample_self_edits_many, training_sequences
from seal_engine.training.batched import train_adapters_batched


def clone_bundle(bundle: ModelBundle) -> ModelBundle:
    """A private copy of the model (weights included) that can be changed without touching ``bundle``."""
    with bundle.lock:
        model = copy.deepcopy(bundle.model)
    return replace(bundle, model=model, lock=threading.RLock())


def merge_adapter(bundle: ModelBundle, adapter: LoraAdapter) -> None:
    """Fold ``adapter`` into ``bundle``'s weights in place (W += scale * B @ A)."""
    with bundle.lock:
        model = peft_model(bundle, adapter.config)
        result = set_peft_model_state_dict(model, adapter.state)
        if result.unexpected_keys:
            model.unload()
            raise AdapterError(f"adapter does not fit {bundle.model_id}")
        bundle.model = model.merge_and_unload()
        bundle.model.requires_grad_(False)
        bundle.model.eval()


def forgetting_summary(matrix: Sequence[Sequence[float]]) -> dict[str, float]:
    """Standard continual-learning figures from ``acc[j][i]`` (rows: steps 0..n; row 0 before any)."""
    n = len(matrix) - 1
    if n < 1:
        return {}
    final = matrix[n]
    just_learned = [matrix[i + 1][i] for i in range(n)]
    return {
        "final_mean_accuracy": statistics.fmean(final[:n]),
        "mean_accuracy_right_after_learning": statistics.fmean(just_learned),
        # How much a document's accuracy fell between learning it and the end.
        "mean_forgetting": statistics.fmean(just_learned[i] - final[i] for i in range(n)),
        "mean_accuracy_before": statistics.fmean(matrix[0][:n]),
    }


def run_continual(
    bundle: ModelBundle,
    documents: Sequence[Document],
    settings: EngineSettings,
    *,
    strategy: str = "implications",
    k: int = 1,
    seed: int | None = None,
    grader: str | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Adapt to ``documents`` in order; returns the accuracy matrix and per-step records."""
    docs = [d for d in documents if d.questions]
    if not docs:
        raise InputError("continual mode needs documents with questions")
    strat = get_strategy(strategy)
    grader = grader or settings.reward_grader
    if grader not in OFFLINE_GRADERS:
        raise InputError(f"continual mode grades offline; grader must be one of {', '.join(OFFLINE_GRADERS)}")
    seed = settings.lora.seed if seed is None else seed
    work = clone_bundle(bundle)

    def grade_all() -> tuple[list[float], float | None]:
        [score] = score_adapters(work, [q for d in docs for q in d.questions], [None], settings)
        grades = [g[grader] for g in score.qa.grades]
        row, pos = [], 0
        for d in docs:
            row.append(statistics.fmean(grades[pos : pos + len(d.questions)]))
            pos += len(d.questions)
        return row, score.retention

    t0 = time.perf_counter()
    row, ret = grade_all()
    matrix, retention, steps = [row], [ret], []
    for j, doc in enumerate(docs):
        t = time.perf_counter()
        [(_, edits)] = sample_self_edits_many(work, [(doc, strat)], k, settings.sampling, seed=seed + j)
        seqs = training_sequences(doc, strat, edits)
        [adapter] = train_adapters_batched(work, [seqs], settings.lora, seeds=[seed + j])
        merge_adapter(work, adapter)
        row, ret = grade_all()
        matrix.append(row)
        retention.append(ret)
        record = {"step": j, "title": doc.title, "self_edits": edits, "num_sequences": len(seqs),
                  "train_loss_last": adapter.losses[-1] if adapter.losses else None, "accuracy": row,
                  "retention": ret, "seconds": time.perf_counter() - t}
        steps.append(record)
        if on_step:
            on_step(j, record)
    return {
        "mode": "continual",
        "strategy": strategy,
        "grader": grader,
        "titles": [d.title for d in docs],
        "matrix": matrix,
        "retention": retention,
        "summary": forgetting_summary(matrix),
        "steps": steps,
        "seconds": time.perf_counter() - t0,
    }
