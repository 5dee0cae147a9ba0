"""The knowledge kind of RL run: self-edits of passages, rewarded by closed-book questions."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from seal_engine.config import EngineSettings
from seal_engine.core.grading import LLMJudge
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.adapt import reward_for
from seal_engine.knowledge.documents import Document
from seal_engine.knowledge.evaluation import score_adapters
from seal_engine.knowledge.likelihood import answer_gains
from seal_engine.knowledge.prompts import get_strategy
from seal_engine.knowledge.self_edits import sample_self_edits_many, training_sequences
from seal_engine.rl.config import RLConfig, candidate_seed, sample_seed
from seal_engine.rl.results import PassageResult, SampleResult
from seal_engine.training.batched import train_adapters_batched


def sample_passages(bundle: ModelBundle, passages: Sequence[Document], config: RLConfig, iteration: int,
                    policy: LoraAdapter | None) -> list[tuple[str, list[str]]]:
    """(prompt, N self-edits) per passage, written by ``policy`` (None: the base model)."""
    strat = get_strategy(config.strategy, config.template)
    return sample_self_edits_many(bundle, [(d, strat) for d in passages], config.samples, config.sampling,
                                  seed=sample_seed(config, iteration), policy=policy)


def evaluate_passage(
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
    """R candidate LoRAs per self-edit plus a passage-only LoRA, trained together; the
    unadapted model, the passage-only LoRA and every candidate graded in shared batches."""
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
    # The dense learning term, for every adapter whichever reward is chosen (one teacher-forced pass):
    # what the run's figures compare the two rewards on.
    gains = answer_gains(bundle, list(doc.questions), adapters)
    dense = config.reward == "likelihood"
    grader = settings.reward_grader
    passage_reward = reward_for(passage_score.qa, passage_score.retention, base.retention, settings,
                                gains[0] if dense else None)
    result = PassageResult(
        passage=passage_index, title=doc.title, baseline_accuracy=base.qa.accuracy[grader],
        baseline_retention=base.retention, passage_accuracy=passage_score.qa.accuracy[grader],
        passage_reward=passage_reward.value,
    )
    for n, edit in enumerate(edits):
        mine = cands[n * config.repeats : (n + 1) * config.repeats]
        my_gains = gains[1 + n * config.repeats : 1 + (n + 1) * config.repeats]
        rewards = [reward_for(s.qa, s.retention, base.retention, settings, g if dense else None)
                   for s, g in zip(mine, my_gains)]
        rets = [s.retention for s in mine if s.retention is not None]
        result.samples.append(SampleResult(
            passage=passage_index, sample=n, prompt=prompt, text=edit,
            seeds=seeds[1 + n * config.repeats : 1 + (n + 1) * config.repeats],
            rewards=[r.to_dict() for r in rewards],
            reward=statistics.fmean(r.value for r in rewards),
            adapted_accuracy=statistics.fmean(r.adapted_accuracy for r in rewards),
            retention=statistics.fmean(rets) if rets else None,
            likelihood_gain=statistics.fmean(my_gains),
        ))
    result.seconds = time.perf_counter() - t0
    return result


def self_edit_completions(kept: Sequence[tuple[str, str]], config: RLConfig) -> list[tuple[str, str]]:
    """(prompt, completion) pairs the policy is fine-tuned on: the strategy's response prefix
    ends the prompt, so the policy learns only what it wrote after it."""
    strat = get_strategy(config.strategy, config.template)
    prefix = strat.response_prefix if strat else ""
    return [(p, t[len(prefix):] if prefix and t.startswith(prefix) else t) for p, t in kept]
