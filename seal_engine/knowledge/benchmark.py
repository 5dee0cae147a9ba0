"""The knowledge-incorporation benchmark: no adaptation vs one adapter per strategy arm."""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from seal_engine.config import EngineSettings
from seal_engine.core.grading import OFFLINE_GRADERS, LLMJudge
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.errors import InputError
from seal_engine.knowledge.adapt import reward_for
from seal_engine.knowledge.documents import Document
from seal_engine.knowledge.evaluation import score_adapters
from seal_engine.knowledge.prompts import get_strategy
from seal_engine.knowledge.self_edits import sample_self_edits_many, training_sequences
from seal_engine.training.batched import train_adapters_batched

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
    resume: bool = False,
    on_passage: Callable[[int, dict], None] | None = None,
    policy: LoraAdapter | None = None,
    policy_name: str | None = None,
) -> dict:
    """Evaluate every arm on every passage; returns (and writes after each passage) the results.

    With ``resume``, passages already in ``json_out`` (same configuration) are kept
    and skipped, so an interrupted run continues where it stopped. ``policy`` (an RL
    self-edit policy adapter, recorded as ``policy_name``) writes the self-edits.
    """
    strats = [get_strategy(s) for s in strategies]  # fails fast on a bad name, before any work
    rows: list[dict] = []
    config = _config(bundle, settings, strategies, k, len(passages))
    if policy is not None:
        config["policy"] = policy_name or "custom"
    results = {"config": config, "passages": rows}
    if resume and json_out is not None and json_out.exists():
        previous = json.loads(json_out.read_text())
        if previous.get("config") != json.loads(json.dumps(config)):
            raise InputError(f"{json_out} was written with a different configuration; not resuming")
        rows.extend(previous.get("passages", []))
    for i, doc in enumerate(passages):
        if i < len(rows):
            if rows[i]["title"] != doc.title:
                raise InputError(f"{json_out}: passage {i} differs from this run's; not resuming")
            if on_passage:
                on_passage(i, rows[i])
            continue
        rows.append(evaluate_passage(bundle, doc, list(strategies), strats, settings, k=k, judge=judge,
                                     seed=settings.lora.seed + i, policy=policy))
        results["summary"] = summarize(rows, [NO_ADAPTATION, *strategies])
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(results, indent=1))
        if on_passage:
            on_passage(i, rows[-1])
    results["summary"] = summarize(rows, [NO_ADAPTATION, *strategies])
    return results


def evaluate_passage(
    bundle: ModelBundle,
    doc: Document,
    names: list[str],
    strats: list,
    settings: EngineSettings,
    *,
    k: int,
    judge: LLMJudge | None,
    seed: int,
    policy: LoraAdapter | None = None,
) -> dict:
    """All arms of one passage: self-edits in one sampling call, adapters trained together,
    every arm (and the unadapted model) graded in shared batches."""
    t0 = time.perf_counter()
    sampled = sample_self_edits_many(bundle, [(doc, s) for s in strats], k, settings.sampling, seed=seed, policy=policy)
    t_gen = time.perf_counter() - t0
    sets = [training_sequences(doc, s, edits) for s, (_, edits) in zip(strats, sampled)]
    t = time.perf_counter()
    adapters = train_adapters_batched(bundle, sets, settings.lora, seeds=[seed] * len(sets))
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    scores = score_adapters(bundle, doc.questions, [None, *adapters], settings, judge=judge)
    t_eval = time.perf_counter() - t
    base_ret = scores[0].retention
    arms: dict = {NO_ADAPTATION: {"accuracy": scores[0].qa.accuracy, "retention": base_ret, "predictions": scores[0].qa.predictions}}
    for name, (_, edits), seqs, adapter, score in zip(names, sampled, sets, adapters, scores[1:]):
        reward = reward_for(score.qa, score.retention, base_ret, settings)
        arms[name] = {
            "accuracy": score.qa.accuracy,
            "judge_error": score.qa.judge_error,
            "reward": reward.to_dict(),
            "num_sequences": len(seqs),
            "train_tokens": adapter.num_tokens,
            "train_loss_last": adapter.losses[-1] if adapter.losses else None,
            "predictions": score.qa.predictions,
            "self_edits": edits,
        }
    return {
        "title": doc.title,
        "num_questions": len(doc.questions),
        "questions": [q.question for q in doc.questions],
        "answers": [q.answer for q in doc.questions],
        "arms": arms,
        "timings": {"self_edits_s": t_gen, "training_s": t_train, "evaluation_s": t_eval},
        "seconds": time.perf_counter() - t0,
    }


def summarize(rows: Sequence[dict], arms: Sequence[str]) -> dict:
    """Mean per arm over passages (accuracy per grader, reward terms, seconds)."""
    out: dict = {
        "passages": len(rows),
        "seconds_per_passage": _mean([r["seconds"] for r in rows]),
        "timings": {key: _mean([r["timings"][key] for r in rows]) for key in ("self_edits_s", "training_s", "evaluation_s")},
        "arms": {},
    }
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
        elif cells and cells[0].get("retention") is not None:
            summary["retention"] = _mean([c["retention"] for c in cells])
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
        "lora": settings.lora.model_dump(exclude=set(settings.lora.EXECUTION_ONLY)),  # resumable across them
        "sampling": settings.sampling.model_dump(),
        "answer_max_new_tokens": settings.answer_max_new_tokens,
        "retention_probes": settings.retention_probes,
        "retention_lambda": settings.retention_lambda,
        "reward_grader": settings.reward_grader,
    }
