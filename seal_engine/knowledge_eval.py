"""The knowledge-incorporation benchmark: no adaptation vs one adapter per strategy arm."""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .adaptation import adapt
from .documents import Document
from .grading import OFFLINE_GRADERS, LLMJudge
from .model import ModelBundle
from .prompts import get_strategy
from .qa import evaluate_questions
from .settings import EngineSettings

NO_ADAPTATION = "no-adaptation"


def select_passages(documents: Sequence[Document], n: int, shuffle_seed: int | None = 0) -> list[Document]:
    """The first ``n`` passages that have questions, after a seeded shuffle (None keeps file order)."""
    docs = [d for d in documents if d.questions]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(docs)
    return docs[:n] if n > 0 else docs


def run_knowledge_eval(
    bundle: ModelBundle,
    passages: Sequence[Document],
    strategies: Sequence[str],
    settings: EngineSettings,
    *,
    k: int = 1,
    judge: LLMJudge | None = None,
    json_out: Path | None = None,
    on_passage: Callable[[int, dict], None] | None = None,
) -> dict:
    """Evaluate every arm on every passage; returns (and writes after each passage) the results."""
    for s in strategies:
        get_strategy(s)  # fail fast on a bad name, before any work
    rows: list[dict] = []
    results = {"config": _config(bundle, settings, strategies, k, len(passages)), "passages": rows}
    for i, doc in enumerate(passages):
        t0 = time.perf_counter()
        base = evaluate_questions(bundle, doc.questions, settings, None, judge)
        row: dict = {
            "title": doc.title,
            "num_questions": len(doc.questions),
            "arms": {NO_ADAPTATION: {"accuracy": base.accuracy, "seconds": time.perf_counter() - t0}},
        }
        for arm in strategies:
            t = time.perf_counter()
            r = adapt(bundle, [doc], settings, strategy=arm, k=k, judge=judge, evaluate_baseline=False, seed=settings.lora.seed + i)
            assert r.adapted is not None and r.reward is not None
            row["arms"][arm] = {
                "accuracy": r.adapted.accuracy,
                "judge_error": r.adapted.judge_error,
                "reward": r.reward.to_dict(),
                "num_sequences": len(r.sequences),
                "train_tokens": r.adapter.num_tokens,
                "seconds": time.perf_counter() - t,
                "predictions": r.adapted.predictions,
                "self_edits": r.self_edits,
            }
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        results["summary"] = summarize(rows, [NO_ADAPTATION, *strategies])
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(results, indent=1))
        if on_passage:
            on_passage(i, row)
    results["summary"] = summarize(rows, [NO_ADAPTATION, *strategies])
    return results


def summarize(rows: Sequence[dict], arms: Sequence[str]) -> dict:
    """Mean per arm over passages (accuracy per grader, reward terms, seconds)."""
    out: dict = {"passages": len(rows), "seconds_per_passage": _mean([r["seconds"] for r in rows]), "arms": {}}
    for arm in arms:
        cells = [r["arms"][arm] for r in rows if arm in r["arms"]]
        graders = [g for g in (*OFFLINE_GRADERS, "judge") if cells and all(g in c["accuracy"] for c in cells)]
        summary = {g: _mean([c["accuracy"][g] for c in cells]) for g in graders}
        # Question-weighted accuracy too: the published SEAL figures count questions.
        weights = [r["num_questions"] for r in rows if arm in r["arms"]]
        for g in graders:
            summary[f"{g}_per_question"] = sum(c["accuracy"][g] * w for c, w in zip(cells, weights)) / max(sum(weights), 1)
        if cells and "reward" in cells[0]:
            summary["reward"] = _mean([c["reward"]["reward"] for c in cells])
            summary["retention"] = _mean([c["reward"]["retention"] for c in cells])
            summary["baseline_retention"] = _mean([c["reward"]["baseline_retention"] for c in cells])
        summary["seconds"] = _mean([c["seconds"] for c in cells])
        out["arms"][arm] = summary
    return out


def _mean(xs: Sequence[float]) -> float:
    return statistics.fmean(xs) if xs else 0.0


def _config(bundle: ModelBundle, settings: EngineSettings, strategies: Sequence[str], k: int, n: int) -> dict:
    return {
        "model": bundle.model_id,
        "dtype": str(bundle.dtype),
        "device": str(bundle.device),
        "passages": n,
        "strategies": list(strategies),
        "k": k,
        "lora": settings.lora.model_dump(),
        "sampling": settings.sampling.model_dump(),
        "answer_max_new_tokens": settings.answer_max_new_tokens,
        "retention_probes": settings.retention_probes,
        "retention_lambda": settings.retention_lambda,
        "reward_grader": settings.reward_grader,
    }
