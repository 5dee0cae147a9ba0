"""Test-time-training data: leave-n-out episodes built from a task's train pairs only.

An episode is (demonstrations, query): the query is a held-out train pair the model
learns to answer from the others. Leave-one-out holds out one pair (the query);
leave-two-out additionally hides one more pair from the demonstrations. Test inputs
never appear. Each episode is augmented (ARC: the recipe's grid transforms; text:
paraphrased inputs), always with example permutation and (ARC) a colour permutation,
then deduplicated and capped.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Generic, TypeVar

from seal_engine.fewshot.arc import ArcPair, ArcTask
from seal_engine.fewshot.augment import IDENTITY, ColorMap, Transform, group_transforms, permuted, random_color_map
from seal_engine.fewshot.grids import MAX_SIDE, fits
from seal_engine.fewshot.text_tasks import TextPair, TextTask

P = TypeVar("P", ArcPair, TextPair)


@dataclass(frozen=True)
class Episode(Generic[P]):
    demos: tuple[P, ...]
    query: P
    note: str = field(default="", compare=False)  # how it was made, e.g. "leave1out+rot90+colors"

    def key(self) -> tuple:
        return (self.demos, self.query)


def leave_n_out(pairs: Sequence[P], n: int) -> list[Episode[P]]:
    """Every way to hold out pair i as the query and hide n-1 further pairs; at least one
    demonstration must remain. Leave-one-out of N pairs gives N episodes (N >= 2),
    leave-two-out N*(N-1) (N >= 3)."""
    if n < 1:
        raise ValueError("n >= 1")
    out: list[Episode[P]] = []
    idx = range(len(pairs))
    for i in idx:
        others = [j for j in idx if j != i]
        for hidden in combinations(others, n - 1):
            demos = tuple(pairs[j] for j in others if j not in hidden)
            if demos:
                out.append(Episode(demos, pairs[i], f"leave{n}out"))
    return out


def dedupe(episodes: Sequence[Episode[P]]) -> list[Episode[P]]:
    seen: set[tuple] = set()
    out = []
    for e in episodes:
        if e.key() not in seen:
            seen.add(e.key())
            out.append(e)
    return out


def cap(episodes: Sequence[Episode[P]], limit: int, rng: random.Random) -> list[Episode[P]]:
    """At most ``limit`` episodes: a seeded sample, kept in their original order.

    The un-augmented episodes (first in the list) are kept before any augmented one.
    """
    if len(episodes) <= limit:
        return list(episodes)
    plain = [i for i, e in enumerate(episodes) if "+" not in e.note and e.note.startswith("leave")]
    rest = [i for i in range(len(episodes)) if i not in set(plain)]
    keep = plain[:limit]
    keep += rng.sample(rest, min(len(rest), limit - len(keep)))
    return [episodes[i] for i in sorted(keep)]


def _map_episode(e: Episode[ArcPair], f: Transform | ColorMap, note: str) -> Episode[ArcPair]:
    return Episode(tuple(p.map(f) for p in e.demos), e.query.map(f), note)


def _episode_fits(e: Episode[ArcPair], max_side: int) -> bool:
    return all(fits(g, max_side) for p in (*e.demos, e.query) for g in p.grids())


def arc_episodes(
    task: ArcTask,
    groups: Sequence[str],
    *,
    leave_out: Sequence[int] = (1, 2),
    max_examples: int = 64,
    color_variants: int = 1,
    seed: int = 0,
    max_side: int = MAX_SIDE,
) -> list[Episode[ArcPair]]:
    """ARC training episodes: leave-n-out x (identity + the groups' transforms), each kept
    in its own colours and in ``color_variants`` random colour permutations (background
    0 kept), demonstrations always in a random order; grids over ``max_side`` dropped."""
    rng = random.Random(seed)
    base = [e for n in leave_out for e in leave_n_out(task.train, n)]
    transforms: list[Transform] = [IDENTITY, *group_transforms(groups, rng)]
    out: list[Episode[ArcPair]] = []
    for t in transforms:
        for e in base:
            moved = e if t is IDENTITY else _map_episode(e, t, f"{e.note}+{t.name}")
            if not _episode_fits(moved, max_side):
                continue
            out.append(Episode(permuted(moved.demos, rng), moved.query, moved.note))
            for _ in range(color_variants):
                recolored = _map_episode(moved, random_color_map(rng), f"{moved.note}+colors")
                out.append(Episode(permuted(recolored.demos, rng), recolored.query, recolored.note))
    return cap(dedupe(out), max_examples, rng)


def usable_paraphrase(original: str, paraphrase: str, output: str) -> bool:
    """Cheap guards on a model paraphrase: non-empty, new, not rambling, and still
    containing the output when the output was copied from the input (extraction)."""
    p = paraphrase.strip()
    if not p or p == original or "\n" in p or len(p) > 2 * len(original) + 40:
        return False
    return output not in original or output in p


def text_episodes(
    task: TextTask,
    groups: Sequence[str],
    *,
    leave_out: Sequence[int] = (1, 2),
    max_examples: int = 64,
    paraphrases: Mapping[str, Sequence[str]] | None = None,
    reorders: int = 2,
    seed: int = 0,
) -> list[Episode[TextPair]]:
    """Text training episodes: leave-n-out, demonstrations in a random order; with the
    ``reorder`` group ``reorders`` more orders each; with ``paraphrase`` a copy of each
    episode whose inputs are replaced by usable paraphrases (outputs unchanged)."""
    rng = random.Random(seed)
    base = [e for n in leave_out for e in leave_n_out(task.train, n)]
    out: list[Episode[TextPair]] = []
    extra_orders = reorders if "reorder" in groups else 0
    para = {k: [p for p in v if usable_paraphrase(k, p, o)]
            for k, v, o in ((k, v, _output_of(task, k)) for k, v in (paraphrases or {}).items())}

    def reword(p: TextPair) -> TextPair:
        options = para.get(p.input) or []
        return TextPair(rng.choice(options), p.output) if options else p

    for e in base:
        for _ in range(1 + extra_orders):
            out.append(Episode(permuted(e.demos, rng), e.query, e.note))
        if "paraphrase" in groups and para:
            moved = Episode(tuple(reword(p) for p in e.demos), reword(e.query), f"{e.note}+paraphrase")
            if moved.key() != e.key():
                out.append(Episode(permuted(moved.demos, rng), moved.query, moved.note))
    return cap(dedupe(out), max_examples, rng)


def _output_of(task: TextTask, inp: str) -> str:
    return next((p.output for p in task.train if p.input == inp), "")
