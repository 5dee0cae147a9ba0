"""Versions of an adapter: the next one trained from its parent on new documents.

A chain root -> ... -> parent -> child. The child trains on the new documents' sequences together
with every sequence its ancestors trained on (rehearsal: the parent's record lists them), so the
facts of earlier documents are trained again rather than only drifted away from; it starts from
the parent's LoRA weights (``continue_training``) or from a fresh initialisation. It is then graded on each ancestor step's questions
(those given when that step was adapted; asked as a chat user asks, graded ``contains`` on
``lineage_answer_tokens`` tokens of the reply). When the share of the ancestors' right answers
(each right after its own training; all their questions pooled) that are now wrong passes the
bound, the child is rejected (:class:`AncestorForgettingExceeded`), as the general-knowledge gate
rejects an adapter that forgot too much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from seal_engine.core.lora import LoraAdapter
from seal_engine.errors import SealError
from seal_engine.knowledge.documents import Question


@dataclass(frozen=True)
class Ancestor:
    """One earlier version of the chain, as the child is graded against it."""

    key: str  # the caller's name for it (the service: the adapter id)
    questions: Sequence[Question] = ()
    accuracy: float | None = None  # on ``questions`` right after its own training (None: not graded)


@dataclass
class Parent:
    """What a child version starts from."""

    adapter: LoraAdapter
    sequences: Sequence[str] = ()  # every sequence the parent trained on, rehearsed by the child
    ancestors: Sequence[Ancestor] = ()  # root first, the parent itself last
    rehearse: bool = True
    # True: training continues the parent's weights; False: a fresh adapter (from the base model) is
    # trained on the new and the rehearsed sequences.
    continue_training: bool = True

    def graded(self) -> list[Ancestor]:
        return [a for a in self.ancestors if a.questions]


@dataclass(frozen=True)
class AncestorScore:
    key: str
    accuracy: float
    accuracy_at_step: float | None
    questions: int = 1

    @property
    def lost(self) -> float:
        """The share of what the step had learned that is gone (0 when it knew nothing or gained)."""
        if not self.accuracy_at_step:
            return 0.0
        return max(0.0, (self.accuracy_at_step - self.accuracy) / self.accuracy_at_step)

    def to_dict(self) -> dict[str, object]:
        return {"adapter_id": self.key, "accuracy": self.accuracy, "accuracy_at_step": self.accuracy_at_step,
                "questions": self.questions, "lost": self.lost}


@dataclass
class ChainCheck:
    """A version graded as a chat user asks (``contains`` on the chat path): on its own questions
    (``own``, None without any) and on each graded ancestor's (``scores``)."""

    scores: list[AncestorScore] = field(default_factory=list)
    own: float | None = None

    @property
    def worst(self) -> AncestorScore | None:
        return max(self.scores, key=lambda s: s.lost, default=None)

    @property
    def lost(self) -> float:
        """The share of the ancestors' right answers (right after each one's own training) now wrong:
        all their graded questions pooled, so that one document's handful of questions (a
        single answer is 20 points of a 5-question document) does not decide alone."""
        known = [s for s in self.scores if s.accuracy_at_step]
        had = sum(s.accuracy_at_step * s.questions for s in known)
        if not had:
            return 0.0
        return max(0.0, (had - sum(s.accuracy * s.questions for s in known)) / had)

    def to_dict(self) -> dict[str, object]:
        worst = self.worst
        return {"own": self.own, "ancestors": [s.to_dict() for s in self.scores], "lost": self.lost,
                "max_lost": worst.lost if worst else 0.0}


class AncestorForgettingExceeded(SealError):
    """The new version lost more of an ancestor's documents than allowed; it must not be registered."""

    code = "ancestor_forgetting_exceeded"

    def __init__(self, check: ChainCheck, bound: float) -> None:
        self.check, self.bound = check, bound
        w = check.worst
        assert w is not None
        super().__init__(
            f"the new version lost {check.lost:.1%} of what the earlier versions had learned (their questions "
            f"right after each one's own training; max_forgetting {bound:.1%}); the most from version {w.key}: "
            f"{w.accuracy_at_step:.1%} then, {w.accuracy:.1%} now; the parent stays the current version; retry "
            "with the parent's documents rehearsed, fewer epochs, or raise max_forgetting")

    def details(self) -> dict[str, object]:
        return {"chain": self.check.to_dict(), "max_forgetting": self.bound}


def enforce_chain(check: ChainCheck, bound: float | None) -> None:
    """Raise :class:`AncestorForgettingExceeded` when the ancestors lost more than ``bound`` (pooled)."""
    if bound is not None and check.scores and check.lost > bound + 1e-9:
        raise AncestorForgettingExceeded(check, bound)
