"""Forgetting: what an adapter loses of the base model's general knowledge, asked as a chat user asks.

Two measures:

- **probe forgetting**: the share of the general-fact probes (:mod:`seal_engine.knowledge.retention`)
  that the base model answers right and the adapter no longer does, each asked as one plain
  user turn through the serving path (:func:`seal_engine.knowledge.qa.chat_answers`),
  greedy, graded ``contains``;
- **answer drift**: how much less likely the adapter makes the base model's own greedy
  answers to generic chat prompts: the mean per-token negative log-likelihood under the
  adapter minus under the base model (teacher-forced, nats per token; no probe involved).

Both sets are split in two by a stable hash of their text. The *gate* half may be seen by
anything that shapes or selects an adapter (the service's retention gate, rewards, replay
data); the *report* half only by benchmarks, so a reported figure is never one that
training or selection could have fitted. The base model's answers are computed once per
model and cached.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from seal_engine.config import EngineSettings
from seal_engine.core.grading import grade_offline
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.errors import SealError
from seal_engine.knowledge.chat_format import user_turn
from seal_engine.knowledge.documents import Question
from seal_engine.knowledge.qa import chat_answers
from seal_engine.knowledge.retention import PROBE_GRADER, probe_set

Split = Literal["gate", "report"]
SPLITS: tuple[Split, ...] = ("gate", "report")


def split_of(text: str) -> Split:
    """Which half ``text`` belongs to: fixed by its content, the same for every model and run."""
    return "report" if hashlib.sha256(text.encode()).digest()[0] % 2 else "gate"


def generic_prompts(split: Split) -> list[str]:
    """Generic chat requests (poems, explanations, advice) of one half."""
    data = json.loads(resources.files("seal_engine.data").joinpath("generic_prompts.json").read_text())
    return [p for p in data if split_of(p) == split]


def probes(bundle: ModelBundle, settings: EngineSettings, split: Split) -> list[Question]:
    """The model's probe facts (those its base answers correctly) of one half."""
    return [p for p in probe_set(bundle, settings) if split_of(p.question) == split]


@dataclass(frozen=True)
class ForgettingCheck:
    """The questions, prompts and base-model answers one measurement compares against."""

    split: Split
    probes: list[Question]
    base_correct: list[bool]  # per probe, the base model's grade through the chat path
    replies: list[tuple[str, str]]  # (rendered user turn, the base model's greedy reply) per generic prompt
    base_nll: float  # per token, of ``replies`` under the base model
    max_tokens: int
    # Per reply: (summed NLL under the base model, tokens), for drift over a subset of the replies.
    base_reply_nlls: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Forgetting:
    retained: float  # share of the probes the base model answers right that the adapter still does
    probes: int  # how many such probes were asked
    drift_nll: float | None  # nats per token; None when not measured
    # Per probe of the check (all of them, in order): whether the adapter answered it right.
    correct: tuple[bool, ...] = ()

    @property
    def forgetting(self) -> float:
        return 1.0 - self.retained

    def to_dict(self) -> dict[str, float | int | None]:
        return {"forgetting": self.forgetting, "retained": self.retained, "probes": self.probes,
                "drift_nll": self.drift_nll}


_checks: dict[tuple, ForgettingCheck] = {}


def forgetting_check(bundle: ModelBundle, settings: EngineSettings, split: Split, *, max_tokens: int = 32,
                     max_probes: int = 0, max_prompts: int = 0) -> ForgettingCheck:
    """The base model's side of a measurement, computed once per process (model, split, sizes)."""
    key = (bundle.model_id, id(bundle), split, max_tokens, max_probes, max_prompts)
    if key not in _checks:
        qs = probes(bundle, settings, split)
        qs = qs[:max_probes] if max_probes else qs
        prompts = generic_prompts(split)
        prompts = prompts[:max_prompts] if max_prompts else prompts
        answers = chat_answers(bundle, [q.question for q in qs] + prompts, [None] * (len(qs) + len(prompts)),
                               max_tokens=max_tokens)
        # The probes again in another batch arrangement (alone, as one adapter's measurement decodes them).
        # In bfloat16 a batch's shape changes the rounding, and a near-tie greedy answer can flip with it:
        # a probe counts only if the base model answers it right both ways, so rounding never reads as
        # forgetting (in float32 the two agree).
        alone = chat_answers(bundle, [q.question for q in qs], [None] * len(qs), max_tokens=max_tokens)
        correct = [all(grade_offline(a, q.answer)[PROBE_GRADER] == 1.0 for a in pair)
                   for pair, q in zip(zip(answers, alone), qs)]
        replies = [(user_turn(bundle, p), a) for p, a in zip(prompts, answers[len(qs):]) if a.strip()]
        [per_reply] = pair_nlls(bundle, replies, [None])
        tokens = sum(n for _, n in per_reply)
        base_nll = sum(total for total, _ in per_reply) / tokens if tokens else 0.0
        _checks[key] = ForgettingCheck(split, qs, correct, replies, base_nll, max_tokens, tuple(per_reply))
    return _checks[key]


def answer_nll(bundle: ModelBundle, pairs: Sequence[tuple[str, str]], adapter: LoraAdapter | None,
               *, batch_size: int = 16, max_len: int = 512) -> float:
    """Mean per-token negative log-likelihood of the completions of (prompt, completion) pairs
    (every completion token weighs the same, whatever batch it falls in); 0.0 for no pairs."""
    return answer_nlls(bundle, pairs, [adapter], batch_size=batch_size, max_len=max_len)[0]


def answer_nlls(bundle: ModelBundle, pairs: Sequence[tuple[str, str]], adapters: Sequence[LoraAdapter | None],
                *, batch_size: int = 16, max_len: int = 512) -> list[float]:
    """:func:`answer_nll` for each adapter, every adapter's rows sharing the forward passes
    (the serving kernels: each row its own adapter, None the base model)."""
    out = []
    for per_pair in pair_nlls(bundle, pairs, adapters, batch_size=batch_size, max_len=max_len):
        tokens = sum(n for _, n in per_pair)
        out.append(sum(total for total, _ in per_pair) / tokens if tokens else 0.0)
    return out


def pair_nlls(bundle: ModelBundle, pairs: Sequence[tuple[str, str]], adapters: Sequence[LoraAdapter | None],
              *, batch_size: int = 16, max_len: int = 512) -> list[list[tuple[float, int]]]:
    """Per adapter, per pair: (summed NLL of the completion's tokens, how many), (0.0, 0) for a pair
    with no completion token left after truncation (pairs keep their positions)."""
    from seal_engine.serving.lora_slots import distinct_slots, serving
    from seal_engine.serving.scoring import token_nlls
    from seal_engine.training.sft import build_example

    built = [build_example(bundle, pair[0], pair[1], max_len) for pair in pairs]
    kept = [i for i, ex in enumerate(built) if ex]
    unique, slot_of = distinct_slots(adapters)
    with serving(bundle, unique) as lora:
        nlls = token_nlls(bundle, lora, [(slot_of[j], *built[i]) for j in range(len(adapters))  # type: ignore[misc]
                                         for i in kept], batch_size=batch_size)
    out = []
    for j in range(len(adapters)):
        mine = iter(nlls[j * len(kept) : (j + 1) * len(kept)])
        at = {i: next(mine) for i in kept}
        out.append([(float(at[i].sum()), len(at[i])) if i in at else (0.0, 0) for i in range(len(pairs))])
    return out


def measure_forgetting(bundle: ModelBundle, check: ForgettingCheck, adapters: Sequence[LoraAdapter],
                       *, drift: bool = True, progress: Callable[[int, int], None] | None = None) -> list[Forgetting]:
    """Each adapter's forgetting against ``check`` (all adapters' probes decoded in shared batches);
    ``progress(done, total)`` after each batch of probes (the drift is the last step)."""
    if not adapters:
        return []
    questions = [q.question for q in check.probes]
    rows = [a for a in adapters for _ in questions]
    steps = len(rows) + (len(adapters) if drift and check.replies else 0)
    answers = chat_answers(bundle, questions * len(adapters), rows, max_tokens=check.max_tokens,
                           on_batch=(lambda done, _n: progress(done, steps)) if progress else None)
    out = []
    for k, adapter in enumerate(adapters):
        mine = answers[k * len(questions) : (k + 1) * len(questions)]
        # Only what the user had before counts: the probes the base model answers through this path.
        correct = tuple(grade_offline(a, q.answer)[PROBE_GRADER] == 1.0 for a, q in zip(mine, check.probes))
        kept = [ok for ok, base_ok in zip(correct, check.base_correct) if base_ok]
        out.append(Forgetting(statistics.fmean(kept) if kept else 1.0, len(kept), None, correct))
    if drift and check.replies:
        nlls = answer_nlls(bundle, check.replies, adapters)
        out = [Forgetting(f.retained, f.probes, nll - check.base_nll, f.correct) for f, nll in zip(out, nlls)]
        if progress:
            progress(steps, steps)
    return out


class ForgettingExceeded(SealError):
    """An adapter lost more general knowledge than allowed; it must not be registered."""

    code = "forgetting_exceeded"

    def __init__(self, measured: Forgetting, bound: float, fallbacks: Sequence[dict[str, float]] = ()) -> None:
        self.measured = measured
        self.bound = bound
        self.fallbacks = list(fallbacks)
        tried = ("; scaled-down updates tried: " + ", ".join(
            f"x{f['scale']:.2g} forgot {f['forgetting']:.1%}" for f in self.fallbacks)) if self.fallbacks else ""
        super().__init__(
            f"the adapter forgot {measured.forgetting:.1%} of the general-knowledge probes the base model answers "
            f"(max_forgetting {bound:.1%}, {measured.probes} probes){tried}; retry with fewer epochs, a lower "
            "learning rate or a recipe with replay, or raise max_forgetting")

    def details(self) -> dict[str, object]:
        out: dict[str, object] = {"forgetting": self.measured.forgetting, "max_forgetting": self.bound,
                                  "forgetting_detail": self.measured.to_dict()}
        if self.fallbacks:
            out["forgetting_fallbacks"] = self.fallbacks
        return out


def gate_check(bundle: ModelBundle, settings: EngineSettings) -> ForgettingCheck:
    """The gate half as the settings size it: what the retention gate compares against, and
    whose base replies anchor training (:class:`seal_engine.training.batched.Anchors`)."""
    return forgetting_check(bundle, settings, "gate", max_tokens=settings.forgetting_probe_tokens,
                            max_probes=settings.forgetting_probes, max_prompts=settings.forgetting_prompts)


def gate_requests(bundle: ModelBundle, settings: EngineSettings) -> list[list[int]]:
    """The gate half (probe questions and generic prompts; ``settings.relevance_requests`` of them
    when set) as chat requests' prompt tokens: the general requests an adapter's relevance
    threshold is calibrated on."""
    from seal_engine.serving.completions import chat_prompt_ids

    texts = [p.question for p in probes(bundle, settings, "gate")] + generic_prompts("gate")
    if 0 < settings.relevance_requests < len(texts):
        n = settings.relevance_requests  # evenly spaced, so both probes and generic prompts stay in
        texts = [texts[i * len(texts) // n] for i in range(n)]
    return [chat_prompt_ids(bundle, [{"role": "user", "content": t}]) for t in texts]


def gate_forgetting(bundle: ModelBundle, settings: EngineSettings, adapter: LoraAdapter,
                    progress: Callable[[int, int], None] | None = None) -> Forgetting:
    """The adapter's forgetting on the *gate* half (what the service's retention gate reads)."""
    [measured] = measure_forgetting(bundle, gate_check(bundle, settings), [adapter], progress=progress)
    return measured


def enforce(measured: Forgetting, bound: float | None, fallbacks: Sequence[dict[str, float]] = ()) -> None:
    """Raise :class:`ForgettingExceeded` when ``measured`` is over ``bound`` (None: no bound)."""
    if bound is not None and measured.forgetting > bound + 1e-9:
        raise ForgettingExceeded(measured, bound, fallbacks)
