"""End-to-end knowledge incorporation: self-edits -> sequences -> LoRA -> grades -> reward."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from seal_engine.config import EngineSettings, LoraSettings
from seal_engine.core.grading import JudgeError, LLMJudge, grade_offline
from seal_engine.core.lora import LoraAdapter, TrainedAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.errors import InputError
from seal_engine.knowledge.chat_format import chat_examples
from seal_engine.knowledge.documents import Document, DocumentError, Question
from seal_engine.knowledge.evaluation import score_adapters
from seal_engine.knowledge.forgetting import Forgetting, enforce, gate_check, gate_forgetting, gate_requests
from seal_engine.knowledge.lineage import AncestorScore, ChainCheck, Parent, enforce_chain
from seal_engine.knowledge.prompts import get_strategy
from seal_engine.knowledge.qa import QAResult, chat_answers
from seal_engine.knowledge.replay import replay_examples
from seal_engine.knowledge.retention import baseline_retention
from seal_engine.knowledge.reward import Reward, compute_reward
from seal_engine.knowledge.self_edits import sample_self_edits_many, training_sequences
from seal_engine.serving.relevance import calibrate
from seal_engine.training.batched import Anchors, Example, train_adapters_batched

# progress(stage, done, total): stages are "self_edits" (per decoding step), "training" (per
# optimizer step), "lineage" (a chain's questions), "forgetting" (per probe batch), "relevance" and
# "evaluation", in that order.
Progress = Callable[[str, int, int], None]
STAGE_ORDER = ("self_edits", "training", "lineage", "forgetting", "relevance", "evaluation")

MAX_SELF_EDITS = 64

# How training sequences are presented: raw text (loss on every token) or chat turns (loss on replies).
TrainingFormat = Literal["text", "chat"]


@dataclass
class AdaptationResult:
    strategy: str
    prompts: list[str]
    self_edits: list[str]
    sequences: list[str]
    adapter: TrainedAdapter
    baseline: QAResult | None = None
    adapted: QAResult | None = None
    reward: Reward | None = None
    forgetting: Forgetting | None = None  # on the gate half (seal_engine.knowledge.forgetting)
    timings: dict[str, float] = field(default_factory=dict)
    fallbacks: list[dict[str, float]] = field(default_factory=list)  # scaled-down updates tried by the gate
    chain: ChainCheck | None = None  # grades on its own and its ancestors' questions (seal_engine.knowledge.lineage)
    chain_of: LoraAdapter | None = field(default=None, repr=False)  # the adapter ``chain`` graded

    def metrics(self) -> dict:
        out: dict = {
            "train_loss_first": self.adapter.losses[0] if self.adapter.losses else None,
            "train_loss_last": self.adapter.losses[-1] if self.adapter.losses else None,
            "train_tokens": self.adapter.num_tokens,
            "num_sequences": len(self.sequences),
            "timings": self.timings,
        }
        if self.baseline is not None:
            out["baseline_accuracy"] = self.baseline.accuracy
        if self.adapted is not None:
            out["adapted_accuracy"] = self.adapted.accuracy
            out["judge_error"] = self.adapted.judge_error
        if self.reward is not None:
            out["reward"] = self.reward.to_dict()
        if self.forgetting is not None:
            out["forgetting"] = self.forgetting.forgetting
            out["forgetting_detail"] = self.forgetting.to_dict()
        if self.fallbacks:
            out["forgetting_fallbacks"] = self.fallbacks
        if self.adapter.relevance is not None:
            out["relevance"] = self.adapter.relevance.to_dict()
        if self.chain is not None:
            out["chain"] = self.chain.to_dict()
        return out

    def record(self) -> dict:
        """JSON-serialisable record of everything but the adapter tensors."""
        rec = {
            "strategy": self.strategy,
            "prompts": self.prompts,
            "self_edits": self.self_edits,
            "sequences": self.sequences,
            "lora": self.adapter.config.to_dict(),
            "seed": self.adapter.seed,
            "losses": self.adapter.losses,
            "metrics": self.metrics(),
        }
        if self.adapted is not None:
            rec["adapted_predictions"] = self.adapted.predictions
        if self.baseline is not None:
            rec["baseline_predictions"] = self.baseline.predictions
        return json.loads(json.dumps(rec, default=str))


def adapt(
    bundle: ModelBundle,
    documents: Sequence[Document],
    settings: EngineSettings,
    *,
    strategy: str | None = None,
    template: str | None = None,
    k: int | None = None,
    lora: LoraSettings | None = None,
    questions: Sequence[Question] | None = None,
    judge: LLMJudge | None = None,
    evaluate_baseline: bool = True,
    measure_retention: bool = True,
    seed: int | None = None,
    progress: Progress | None = None,
    policy: LoraAdapter | None = None,
    training_format: TrainingFormat = "text",
    replay: int = 0,
    anchors: int = 0,
    anchor_weight: float = 1.0,
    scale: float = 1.0,
    fallback_scales: Sequence[float] = (),
    measure_forgetting: bool = False,
    max_forgetting: float | None = None,
    relevance_quantile: float | None = None,
    parent: Parent | None = None,
) -> AdaptationResult:
    """Teach the model ``documents``: one adapter trained on all their self-edits.

    ``strategy`` and ``k`` default to the settings' recipe (the recipe's other fields are
    passed by the caller: ``**settings.recipe.adapt_kwargs()``). Questions default to those attached to the documents; without any, nothing is
    graded and no reward is computed. ``policy`` (a self-edit policy adapter) writes
    the self-edits; the adapter itself is always trained on the base model.

    ``training_format`` "chat" trains on the sequences rendered as chat turns, the loss on
    the replies (:mod:`seal_engine.knowledge.chat_format`); ``replay`` mixes in up to that
    many of the base model's own chat replies (:mod:`seal_engine.knowledge.replay`) as
    training data; ``anchors`` instead holds the adapter to the base model's next-token
    distributions on that many of its replies to the gate prompts (a KL penalty of ``anchor_weight``,
    :class:`~seal_engine.training.batched.Anchors`). ``scale`` multiplies the trained
    update (below 1: part of the way from the base model to the adapter).

    ``measure_forgetting`` (implied by ``max_forgetting``) checks the adapter on the gate half
    of the general-knowledge probes; over ``max_forgetting`` it raises
    :class:`~seal_engine.knowledge.forgetting.ForgettingExceeded`, unless one of
    ``fallback_scales`` (tried in order) brings the scaled-down update within it; the
    adapter then returned is that one, and ``result.fallbacks`` lists what was tried.

    For a version that continued its parent's weights the fallbacks are points between the parent and it
    (:meth:`~seal_engine.core.lora.LoraAdapter.toward`).

    ``relevance_quantile`` calibrates the adapter's relevance threshold on the gate half's
    requests (:mod:`seal_engine.serving.relevance`): served, it then answers only the requests
    about its documents, the base model the rest. None: it serves every request that names it.
    """
    if not documents:
        raise DocumentError("no documents to adapt to")
    strategy = strategy or settings.recipe.strategy
    k = k if k is not None else settings.recipe.num_self_edits
    if not 1 <= k <= MAX_SELF_EDITS:
        raise InputError(f"k (self-edits per document) must be between 1 and {MAX_SELF_EDITS}")
    strat = get_strategy(strategy, template)
    lora = lora or settings.lora
    seed = lora.seed if seed is None else seed
    report = progress or (lambda *_: None)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    report("self_edits", 0, 1)
    sampled = sample_self_edits_many(bundle, [(d, strat) for d in documents], k, settings.sampling, seed=seed, policy=policy,
                                     on_token=lambda done, total: report("self_edits", done, total + 1))
    prompts = [p for p, _ in sampled if p]
    edits = [e for _, doc_edits in sampled for e in doc_edits]
    sequences: list[str] = []
    examples: list[Example] = []
    for doc, (_, doc_edits) in zip(documents, sampled):
        mine = [s for s in training_sequences(doc, strat, doc_edits) if s not in sequences]
        sequences.extend(mine)
        examples.extend(chat_examples(bundle, doc.title, mine) if training_format == "chat" else mine)
    if parent is not None and parent.rehearse:
        # The chain's earlier sequences, trained again with the new ones (the child's record lists
        # them all, so its own child rehearses the whole chain).
        old = [s for s in dict.fromkeys(parent.sequences) if s not in sequences]
        sequences = old + sequences
        examples = (chat_examples(bundle, "", old) if training_format == "chat" else old) + examples
    examples.extend(replay_examples(bundle, replay))
    report("self_edits", 1, 1)
    timings["self_edits_s"] = time.perf_counter() - t

    t = time.perf_counter()
    # The base model's own replies to the gate half of the generic prompts (cached with the gate's check).
    anchor_set = Anchors(gate_check(bundle, settings).replies[:anchors], weight=anchor_weight) if anchors else None
    [adapter] = train_adapters_batched(
        bundle, [examples], lora, seeds=[seed], on_step=lambda s, n, _loss: report("training", s, n),
        anchors=anchor_set, starts=[parent.adapter if parent is not None and parent.continue_training else None],
    )
    if scale != 1.0:
        adapter = adapter.scaled(scale)
    timings["training_s"] = time.perf_counter() - t

    result = AdaptationResult(strat.name if strat else "passage", prompts, edits, sequences, adapter, timings=timings)
    qs = list(questions) if questions is not None else [q for d in documents for q in d.questions]

    def check_chain(subject: LoraAdapter) -> None:
        # What a version of a chain knows, as a chat user asks: its own questions and its ancestors'.
        t = time.perf_counter()
        result.chain, result.chain_of = grade_chain(bundle, subject, qs, parent, settings), subject
        timings["chain_s"] = timings.get("chain_s", 0.0) + time.perf_counter() - t
        enforce_chain(result.chain, max_forgetting)

    if qs or (parent is not None and parent.graded()):
        # Before the general gate: cheaper (a few questions), and a version that lost its ancestors is rejected anyway.
        report("lineage", 0, 1)
        check_chain(adapter)
        report("lineage", 1, 1)
    if measure_forgetting or max_forgetting is not None:
        t = time.perf_counter()
        report("forgetting", 0, 1)
        # Over the bound: the same update scaled down (a point nearer the base model), no retraining.
        tries = list(fallback_scales) if max_forgetting is not None else []

        def check_progress(n: int) -> Callable[[int, int], None]:
            # Check n of at most len(tries) + 1 gets its share of the stage's progress.
            return lambda done, total: report("forgetting", n * total + done, (len(tries) + 1) * total)

        result.forgetting = gate_forgetting(bundle, settings, adapter, progress=check_progress(0))
        for n, fallback in enumerate(tries, start=1):
            if result.forgetting.forgetting <= max_forgetting:
                break
            # A new version of a chain steps back toward its parent (which passed the gate), not toward
            # the base model, which would take the parent's documents away with it.
            continued = parent is not None and parent.continue_training
            candidate = adapter.toward(parent.adapter, fallback) if continued else adapter.scaled(fallback)
            measured = gate_forgetting(bundle, settings, candidate, progress=check_progress(n))
            result.fallbacks.append({"scale": scale * fallback, "forgetting": measured.forgetting,
                                     **({"toward_parent": True} if continued else {})})
            if measured.forgetting < result.forgetting.forgetting or measured.forgetting <= max_forgetting:
                result.adapter, result.forgetting = candidate, measured
        timings["forgetting_s"] = time.perf_counter() - t
        report("forgetting", 1, 1)
        enforce(result.forgetting, max_forgetting, fallbacks=result.fallbacks)
        adapter = result.adapter
    if result.chain is not None and result.adapter is not result.chain_of:
        # The gate scaled the update down (the parent's part of it too): graded again.
        check_chain(result.adapter)
    if relevance_quantile is not None:
        t = time.perf_counter()
        report("relevance", 0, 1)
        adapter.relevance = calibrate(bundle, adapter, gate_requests(bundle, settings), relevance_quantile)
        timings["relevance_s"] = time.perf_counter() - t
        report("relevance", 1, 1)
    if qs:
        t = time.perf_counter()
        report("evaluation", 0, 1)
        subjects = [None, adapter] if evaluate_baseline else [adapter]
        # The gate already measured what was kept (on the probes the base answers): not measured twice.
        gated = result.forgetting is not None
        scores = score_adapters(bundle, qs, subjects, settings, judge=judge,
                                with_retention=measure_retention and not gated)
        if evaluate_baseline:
            result.baseline = scores[0].qa
        result.adapted = scores[-1].qa
        if gated:
            result.reward = reward_for(result.adapted, result.forgetting.retained, 1.0, settings)
        elif measure_retention:
            base_ret = scores[0].retention if evaluate_baseline else baseline_retention(bundle, settings)
            result.reward = reward_for(result.adapted, scores[-1].retention, base_ret, settings)
        report("evaluation", 1, 1)
        timings["evaluation_s"] = time.perf_counter() - t
    return result


def grade_chain(bundle: ModelBundle, adapter: LoraAdapter, own: Sequence[Question], parent: Parent | None,
                settings: EngineSettings) -> ChainCheck:
    """``adapter`` asked its own questions and each graded ancestor's through the chat path (one plain
    user turn, greedy, ``settings.lineage_answer_tokens`` tokens; the weights, not the relevance
    routing), graded ``contains``; all in one decode."""
    graded = parent.graded() if parent is not None else []
    sets = [list(own), *[list(a.questions) for a in graded]]
    flat = [q for qs in sets for q in qs]
    replies = chat_answers(bundle, [q.question for q in flat], [dataclasses.replace(adapter, relevance=None)] * len(flat),
                           max_tokens=settings.lineage_answer_tokens)
    grades = [grade_offline(r, q.answer)["contains"] for r, q in zip(replies, flat)]
    means, pos = [], 0
    for qs in sets:
        means.append(sum(grades[pos : pos + len(qs)]) / len(qs) if qs else None)
        pos += len(qs)
    return ChainCheck([AncestorScore(a.key, m, a.accuracy, len(a.questions)) for a, m in zip(graded, means[1:])],
                      own=means[0])


def reward_for(adapted: QAResult, retention: float | None, baseline_retention: float | None, settings: EngineSettings,
               gain: float | None = None) -> Reward:
    """The reward from an adapter's QA result, with the configured grader."""
    grader = settings.reward_grader
    if grader not in adapted.accuracy:
        if grader == "judge" and adapted.judge_error:  # the judge is down: not the input's fault
            raise JudgeError(f"the LLM judge grades the reward and gave no verdict: {adapted.judge_error}")
        raise InputError(f"reward grader {grader!r} has no score (judge error: {adapted.judge_error})")
    return compute_reward(adapted.accuracy[grader], retention if retention is not None else 1.0,
                          baseline_retention if baseline_retention is not None else 1.0, settings.retention_lambda,
                          gain)


def save_result(result: AdaptationResult, out_dir: str | Path) -> Path:
    """Adapter files in PEFT format plus ``seal_record.json`` beside them."""
    out = result.adapter.save(out_dir)
    (out / "seal_record.json").write_text(json.dumps(result.record(), indent=2))
    return out
