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
Seeds are derived from (config seed, iteration, passage, sample, repeat), so any
piece recomputed after a crash gives the same result on the same machine.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from seal_engine.knowledge.adapt import reward_for
from seal_engine.training.batched import train_adapters_batched
from seal_engine.knowledge.documents import Document
from seal_engine.config import FewShotSettings
from seal_engine.knowledge.evaluation import score_adapters
from seal_engine.core.grading import LLMJudge
from seal_engine.core.lora import LoraAdapter, TrainedAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.prompts import get_strategy
from seal_engine.knowledge.self_edits import sample_self_edits_many, training_sequences
from seal_engine.config import EngineSettings, LoraSettings, SamplingSettings, SFTSettings
from seal_engine.training.sft import train_sft


class RLConfig(BaseModel):
    """Everything that defines an RL run (stored with it, so a resume uses the same).

    ``task`` picks what the policy learns to write: ``knowledge`` (self-edits of
    passages, graded by closed-book questions) or, for few-shot task adaptation, ``text``
    or ``arc`` (training recipes, graded by the adapted model on held-out examples; see
    :mod:`seal_engine.rl.fewshot`). For tasks, a "passage" below is a task.
    """

    task: Literal["knowledge", "text", "arc"] = "knowledge"
    passages: int = Field(8, ge=1, le=10000, description="P: passages per iteration")
    samples: int = Field(4, ge=1, le=64, description="N: self-edits sampled per passage")
    repeats: int = Field(1, ge=1, le=16, description="R: inner-loop trainings per self-edit (different seeds)")
    iterations: int = Field(1, ge=1, le=50)
    strategy: str = "implications"
    template: str | None = None
    # Keep a passage's best self-edit only if its reward beats the passage-only reward by this.
    keep_margin: float | None = None
    # Questions graded per passage (None: all of them).
    max_questions: int | None = Field(None, ge=1)
    # Fresh passages each iteration (iteration i takes the i-th block of P), or the same P.
    fresh_passages: bool = True
    lora: LoraSettings = Field(default_factory=lambda: LoraSettings(epochs=5))
    sft: SFTSettings = Field(default_factory=SFTSettings)
    sampling: SamplingSettings = Field(default_factory=lambda: SamplingSettings(max_new_tokens=256))
    retention_lambda: float = Field(1.0, ge=0.0)
    retention_probes: int | None = Field(None, ge=0, description="None: the engine setting")
    # "stack": each iteration continues training the previous policy LoRA; "fresh": a new
    # LoRA from the base model on this iteration's kept pairs.
    policy_init: str = Field("stack", pattern="^(stack|fresh)$")
    # Few-shot tasks: test-time training, recipe bounds and budget, recipe sampling.
    fewshot: FewShotSettings = Field(default_factory=FewShotSettings)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> RLConfig:
        if not self.is_task:
            get_strategy(self.strategy, self.template)  # UnknownStrategyError is a ValueError -> 422
            if self.strategy == "passage":
                raise ValueError("RL needs a self-edit strategy, not the passage-only baseline")
        elif self.repeats != 1:
            raise ValueError("few-shot task runs train each recipe once (repeats = 1)")
        return self

    @property
    def is_task(self) -> bool:
        return self.task != "knowledge"

    @classmethod
    def small(cls, **overrides: Any) -> RLConfig:
        """One iteration in well under an hour on 2 CPU cores with the default model."""
        base = dict(passages=4, samples=3, repeats=1, max_questions=5, lora=LoraSettings(epochs=5),
                    sampling=SamplingSettings(max_new_tokens=128), sft=SFTSettings(epochs=2), retention_probes=16)
        return cls(**{**base, **overrides})

    def engine_settings(self, settings: EngineSettings) -> EngineSettings:
        update: dict[str, Any] = {"retention_lambda": self.retention_lambda, "sampling": self.sampling}
        if self.retention_probes is not None:
            update["retention_probes"] = self.retention_probes
        return settings.model_copy(update=update)


@dataclass
class SampleResult:
    passage: int
    sample: int
    prompt: str
    text: str
    seeds: list[int]
    rewards: list[dict[str, float]]  # reward terms per repeat
    reward: float  # mean over repeats
    adapted_accuracy: float
    retention: float | None


@dataclass
class PassageResult:
    passage: int
    title: str
    baseline_accuracy: float  # no adaptation
    baseline_retention: float | None
    passage_accuracy: float  # LoRA on the passage alone
    passage_reward: float
    samples: list[SampleResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PassageResult:
        """Reads knowledge and task results alike (task samples carry extra fields)."""
        if any("recipe" in s or "error" in s for s in d.get("samples", [])):
            from seal_engine.rl.fewshot import task_result_from_dict

            return task_result_from_dict(d)
        d = dict(d)
        d["samples"] = [SampleResult(**s) for s in d.get("samples", [])]
        return cls(**d)


@dataclass
class IterationResult:
    iteration: int
    passages: list[PassageResult]
    kept: list[tuple[str, str]]
    policy: TrainedAdapter | None
    metrics: dict


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


def sample_seed(config: RLConfig, iteration: int) -> int:
    return config.seed * 1_000_003 + iteration * 7919 + 17


def candidate_seed(config: RLConfig, iteration: int, passage: int, sample: int, repeat: int) -> int:
    return config.seed + 100_000 * iteration + 1000 * passage + 10 * sample + repeat


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
    strat = get_strategy(config.strategy, config.template)
    return sample_self_edits_many(bundle, [(d, strat) for d in passages], config.samples, config.sampling,
                                  seed=sample_seed(config, iteration), policy=policy)


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
    t0 = time.perf_counter()
    settings = config.engine_settings(settings)
    strat = get_strategy(config.strategy, config.template)
    sets: list[list[str]] = [training_sequences(doc, None, [])]
    seeds = [candidate_seed(config, iteration, passage_index, 99, 0)]
    for n, edit in enumerate(edits):
        seqs = training_sequences(doc, strat, [edit])
        for r in range(config.repeats):
            sets.append(seqs)
            seeds.append(candidate_seed(config, iteration, passage_index, n, r))
    adapters = train_adapters_batched(bundle, sets, config.lora, seeds=seeds)
    scores = score_adapters(bundle, list(doc.questions), [None, *adapters], settings, judge=judge)
    base, passage_score, cands = scores[0], scores[1], scores[2:]
    grader = settings.reward_grader
    passage_reward = reward_for(passage_score.qa, passage_score.retention, base.retention, settings)
    result = PassageResult(
        passage=passage_index, title=doc.title, baseline_accuracy=base.qa.accuracy[grader],
        baseline_retention=base.retention, passage_accuracy=passage_score.qa.accuracy[grader],
        passage_reward=passage_reward.value,
    )
    for n, edit in enumerate(edits):
        mine = cands[n * config.repeats : (n + 1) * config.repeats]
        rewards = [reward_for(s.qa, s.retention, base.retention, settings) for s in mine]
        rets = [s.retention for s in mine if s.retention is not None]
        result.samples.append(SampleResult(
            passage=passage_index, sample=n, prompt=prompt, text=edit,
            seeds=seeds[1 + n * config.repeats : 1 + (n + 1) * config.repeats],
            rewards=[r.to_dict() for r in rewards],
            reward=statistics.fmean(r.value for r in rewards),
            adapted_accuracy=statistics.fmean(r.adapted_accuracy for r in rewards),
            retention=statistics.fmean(rets) if rets else None,
        ))
    result.seconds = time.perf_counter() - t0
    return result


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
        strat = get_strategy(config.strategy, config.template)
        prefix = strat.response_prefix if strat else ""
        pairs = [(p, t[len(prefix):] if prefix and t.startswith(prefix) else t) for p, t in kept]
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
        "kept": len(kept),
    }


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
