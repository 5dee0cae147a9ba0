"""Voting over answers given under different views of the same test input, and pass@k."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from seal_engine.fewshot.grids import Grid


def vote(answers: Sequence[Grid | None], attempts: int = 2) -> list[Grid]:
    """Up to ``attempts`` distinct grids, most votes first.

    ``answers`` are already mapped back to the original orientation, one per view,
    the untransformed view first; None (unparsable, or not invertible) casts no vote.
    Ties go to the answer that appeared first, i.e. the one closest to the plain view.
    """
    valid = [a for a in answers if a is not None]
    counts = Counter(valid)
    first = {}
    for i, a in enumerate(valid):
        first.setdefault(a, i)
    ranked = sorted(counts, key=lambda g: (-counts[g], first[g]))
    return ranked[:attempts]


def solved(attempts_per_test: Sequence[Sequence[Grid]], expected: Sequence[Grid]) -> bool:
    """A task is solved only if every test output is among its attempts."""
    return len(attempts_per_test) == len(expected) and all(
        want in tries for tries, want in zip(attempts_per_test, expected)
    )


def exact_match(prediction: str, expected: str) -> bool:
    """Text answers: equal after trimming surrounding whitespace."""
    return prediction.strip() == expected.strip()
