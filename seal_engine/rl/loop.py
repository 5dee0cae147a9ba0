"""ReST-EM for self-edits: the outer loop that teaches the policy to write better training data.

One iteration, as small functions with explicit inputs and outputs so that a service
can fan the per-passage work out, store every result, and resume:

1. :func:`sample_iteration` - N self-edits per passage from the current policy
   (one batched generate call; a pure function of policy, passages and seed).
2. :func:`evaluate_passage_samples` - for one passage: R candidate LoRAs per self-edit
   (different seeds) plus a passage-only LoRA, all trained together; the unadapted
   model, the passage-only LoRA and every candidate graded in shared batches;
   reward per sample = mean over R of the reward terms.
3. :func:`select_best` - the best of N per passage (optionally only if it beats the
   passage-only baseline by a margin).
4. :func:`train_policy` - SFT of the policy on the kept (prompt, self-edit) pairs.

:func:`run_iteration` chains them in-process; :func:`iteration_metrics` summarises.
What is specific to a task kind lives beside this loop: :mod:`seal_engine.rl.knowledge`
(self-edits of passages) and :mod:`seal_engine.rl.fewshot` (recipes of few-shot tasks);
the run's configuration and seeds in :mod:`seal_engine.rl.config`, the result types in
:mod:`seal_engine.rl.results`.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from seal_engine.config import EngineSettings
from seal_engine.core.grading import LLMJudge
from seal_engine.core.lora import LoraAdapter, TrainedAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.documents import Document
from seal_engine.rl.config import RLConfig, candidate_seed, sample_seed
from seal_engine.rl.knowledge import evaluate_passage, sample_passages, self_edit_completions
from seal_engine.rl.results import IterationResult, PassageResult, SampleResult
from seal_engine.training.sft import train_sft


def passages_for_iteration(pool: Sequence[Any], config: RLConfig, iteration: int) -> list[Any]:
    """The P passages (with questions) or tasks (with held-out outputs) of ``iteration``,
    from a seeded shuffle of ``pool``."""
    if config.is_task:
        from seal_engine.fewshot.datasets import gradable

        docs = [t for t in pool if gradable(t)]
    else:
        docs = [d for d in pool if d.questions]
    random.Random(config.seed).shuffle(docs)
    if not docs:
        return []
    start = (iteration * config.passages) % len(docs) if config.fresh_passages else 0
    chosen = (docs[start:] + docs[:start])[: config.passages]
    if config.max_questions and not config.is_task:
        chosen = [Document(d.text, d.title, d.questions[: config.max_questions]) for d in chosen]
    return chosen


def sample_iteration(
    bundle: ModelBundle,
    passages: Sequence[Document],
    config: RLConfig,
    iteration: int,
    policy: LoraAdapter | None,
) -> list[tuple[str, list[str]]]:
    """(prompt, N self-edits) per passage, written by ``policy`` (None: the base model)."""
    if config.is_task:
        from seal_engine.rl.fewshot import sample_task_recipes

        return sample_task_recipes(bundle, passages, config.samples, config.fewshot,
                                   seed=sample_seed(config, iteration), policy=policy)
    return sample_passages(bundle, passages, config, iteration, policy)


def evaluate_passage_samples(
    bundle: ModelBundle,
    doc: Document,
    passage_index: int,
    prompt: str,
    edits: Sequence[str],
    config: RLConfig,
    settings: EngineSettings,
    iteration: int,
    *,
    judge: LLMJudge | None = None,
) -> PassageResult:
    """Rewards of one passage's self-edits (and its baselines); all LoRAs train and grade together.

    For a few-shot task: its recipes executed and graded on held-out examples (baseline =
    in-context only, "passage" = the fixed default recipe)."""
    if config.is_task:
        from seal_engine.rl.fewshot import evaluate_task_recipes

        return evaluate_task_recipes(bundle, doc, passage_index, prompt, edits, config.fewshot,
                                     seed=candidate_seed(config, iteration, passage_index, 0, 0))
    return evaluate_passage(bundle, doc, passage_index, prompt, edits, config, settings, iteration, judge=judge)


def select_best(results: Sequence[PassageResult], keep_margin: float | None = None,
                *, successful_only: bool = False) -> list[SampleResult]:
    """The best sample of each passage (first on ties); with a margin, only those beating
    the passage-only reward by at least ``keep_margin``. ``successful_only`` (few-shot
    tasks, as in ReST-EM) keeps only recipes that ran and earned a reward above 0."""
    kept = []
    for pr in results:
        samples = pr.samples
        if successful_only:
            samples = [s for s in samples if s.reward > 0 and getattr(s, "error", None) is None]
        if not samples:
            continue
        best = max(samples, key=lambda s: (s.reward, -s.sample))
        if keep_margin is not None and best.reward < pr.passage_reward + keep_margin:
            continue
        kept.append(best)
    return kept


def train_policy(
    bundle: ModelBundle,
    kept: Sequence[tuple[str, str]],
    config: RLConfig,
    policy: LoraAdapter | None,
    iteration: int,
    *,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainedAdapter | None:
    """The next policy: SFT on (prompt, self-edit) pairs. None when nothing was kept.

    The response prefix the prompt ends with is part of the prompt, so the policy
    learns only what it wrote after it.
    """
    if not kept:
        return None
    if config.is_task:
        from seal_engine.rl.fewshot import recipe_completion

        pairs = [(p, recipe_completion(t)) for p, t in kept]
    else:
        pairs = self_edit_completions(kept, config)
    init = policy if config.policy_init == "stack" else None
    return train_sft(bundle, pairs, config.sft, init=init, seed=config.sft.seed + iteration, on_step=on_step)


def iteration_metrics(results: Sequence[PassageResult], kept: Sequence[SampleResult]) -> dict:
    samples = [s for r in results for s in r.samples]
    best = [max(s.reward for s in r.samples) for r in results if r.samples]

    def mean(xs: Sequence[float | None]) -> float | None:
        vals = [x for x in xs if x is not None]
        return statistics.fmean(vals) if vals else None

    return {
        "passages": len(results),
        "samples": len(samples),
        "mean_reward": mean([s.reward for s in samples]),
        "mean_best_of_n_reward": mean(best),
        "mean_adapted_accuracy": mean([s.adapted_accuracy for s in samples]),
        "baseline_accuracy": mean([r.baseline_accuracy for r in results]),
        "passage_accuracy": mean([r.passage_accuracy for r in results]),
        "passage_reward": mean([r.passage_reward for r in results]),
        "baseline_retention": mean([r.baseline_retention for r in results]),
        "mean_likelihood_gain": mean([s.likelihood_gain for s in samples]),
        # How well the dense term orders the self-edits as their graded accuracy does (knowledge runs).
        "gain_accuracy_rank_correlation": rank_correlation(
            [(s.likelihood_gain, s.adapted_accuracy) for s in samples if s.likelihood_gain is not None]),
        "kept": len(kept),
    }


def _ranks(xs: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their mean rank."""
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ranks = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def rank_correlation(pairs: Sequence[tuple[float, float]]) -> float | None:
    """Spearman's rho of (x, y) pairs (Pearson on tie-averaged ranks); None below 3 pairs or with no spread."""
    if len(pairs) < 3:
        return None
    rx, ry = _ranks([p[0] for p in pairs]), _ranks([p[1] for p in pairs])
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / (vx * vy) ** 0.5 if vx > 0 and vy > 0 else None


def run_iteration(
    bundle: ModelBundle,
    pool: Sequence[Document],
    config: RLConfig,
    settings: EngineSettings,
    iteration: int,
    policy: LoraAdapter | None,
    *,
    judge: LLMJudge | None = None,
    done: dict[int, PassageResult] | None = None,
    on_passage: Callable[[PassageResult], None] | None = None,
) -> IterationResult:
    """One full iteration in this process. ``done`` holds passages already evaluated
    (resume); ``on_passage`` is called after each new one (e.g. to store it)."""
    t0 = time.perf_counter()
    docs = passages_for_iteration(pool, config, iteration)
    done = dict(done or {})
    sampled = sample_iteration(bundle, docs, config, iteration, policy) if len(done) < len(docs) else []
    results = []
    for i, doc in enumerate(docs):
        if i not in done:
            prompt, edits = sampled[i]
            done[i] = evaluate_passage_samples(bundle, doc, i, prompt, edits, config, settings, iteration, judge=judge)
            if on_passage:
                on_passage(done[i])
        results.append(done[i])
    kept = select_best(results, config.keep_margin, successful_only=config.is_task)
    t = time.perf_counter()
    new_policy = train_policy(bundle, [(s.prompt, s.text) for s in kept], config, policy, iteration)
    metrics = iteration_metrics(results, kept)
    metrics["iteration"] = iteration
    metrics["sft_s"] = time.perf_counter() - t
    metrics["sft_loss_first"] = new_policy.losses[0] if new_policy and new_policy.losses else None
    metrics["sft_loss_last"] = new_policy.losses[-1] if new_policy and new_policy.losses else None
    metrics["seconds"] = time.perf_counter() - t0
    return IterationResult(iteration, results, [(s.prompt, s.text) for s in kept], new_policy, metrics)
