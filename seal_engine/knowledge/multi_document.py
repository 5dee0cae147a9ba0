"""Multi-document (continued-pretraining) mode: one adapter learns many documents at once.

Each arm pools the training sequences of every document (its self-edits plus the
passage, or the passage alone) into one training set; all arms train together in the
batched trainer and are graded on every document's questions, plus retention. This
is SEAL's continued-pretraining setting: does the self-edit data still help when the
adapter must hold many documents, not one?
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from seal_engine.config import EngineSettings
from seal_engine.core.grading import LLMJudge
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.errors import InputError
from seal_engine.knowledge.adapt import reward_for
from seal_engine.knowledge.benchmark import NO_ADAPTATION
from seal_engine.knowledge.documents import Document
from seal_engine.knowledge.evaluation import score_adapters
from seal_engine.knowledge.prompts import get_strategy
from seal_engine.knowledge.self_edits import sample_self_edits_many, training_sequences
from seal_engine.training.batched import train_adapters_batched

# Documents whose self-edits are sampled in one generate call (bounds the KV cache).
SAMPLING_CHUNK = 16


def pooled_sequences(per_document: Sequence[Sequence[str]]) -> list[str]:
    """All documents' sequences in document order, duplicates dropped."""
    seen: set[str] = set()
    out: list[str] = []
    for seqs in per_document:
        for s in seqs:
            if s not in seen:
                seen.add(s)
                out.append(s)
    return out


def run_multi_document_eval(
    bundle: ModelBundle,
    documents: Sequence[Document],
    strategies: Sequence[str],
    settings: EngineSettings,
    *,
    k: int = 1,
    policy: LoraAdapter | None = None,
    judge: LLMJudge | None = None,
    seed: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """One adapter per arm over all ``documents``; accuracy on all their questions per arm."""
    strats = [get_strategy(s) for s in strategies]
    docs = [d for d in documents if d.questions]
    if not docs:
        raise InputError("multi-document mode needs documents with questions")
    seed = settings.lora.seed if seed is None else seed
    report = progress or (lambda *_: None)
    t0 = time.perf_counter()

    # Self-edits: every (document, arm) pair, sampled in chunks of documents.
    edits: list[list[list[str]]] = [[[] for _ in docs] for _ in strats]
    for start in range(0, len(docs), SAMPLING_CHUNK):
        chunk = docs[start : start + SAMPLING_CHUNK]
        items = [(d, s) for s in strats for d in chunk]
        sampled = sample_self_edits_many(bundle, items, k, settings.sampling, seed=seed + start, policy=policy)
        for j, (_, texts) in enumerate(sampled):
            edits[j // len(chunk)][start + j % len(chunk)] = texts
        report("self_edits", min(start + SAMPLING_CHUNK, len(docs)), len(docs))
    t_gen = time.perf_counter() - t0

    sets = [pooled_sequences([training_sequences(d, s, e) for d, e in zip(docs, arm_edits)])
            for s, arm_edits in zip(strats, edits)]
    t = time.perf_counter()
    adapters = train_adapters_batched(bundle, sets, settings.lora, seeds=[seed] * len(sets),
                                      on_step=lambda i, n, _loss: report("training", i, n))
    t_train = time.perf_counter() - t

    t = time.perf_counter()
    questions = [q for d in docs for q in d.questions]
    scores = score_adapters(bundle, questions, [None, *adapters], settings, judge=judge)
    t_eval = time.perf_counter() - t
    base_ret = scores[0].retention
    arms: dict = {NO_ADAPTATION: {"accuracy": scores[0].qa.accuracy, "retention": base_ret}}
    for name, seqs, adapter, score, arm_edits in zip(strategies, sets, adapters, scores[1:], edits):
        arms[name] = {
            "accuracy": score.qa.accuracy,
            "judge_error": score.qa.judge_error,
            "reward": reward_for(score.qa, score.retention, base_ret, settings).to_dict(),
            "num_sequences": len(seqs),
            "train_tokens": adapter.num_tokens,
            "train_loss_last": adapter.losses[-1] if adapter.losses else None,
            "self_edits": arm_edits,
        }
    return {
        "mode": "multi-document",
        "documents": len(docs),
        "questions": len(questions),
        "titles": [d.title for d in docs],
        "arms": arms,
        "timings": {"self_edits_s": t_gen, "training_s": t_train, "evaluation_s": t_eval},
        "seconds": time.perf_counter() - t0,
    }
