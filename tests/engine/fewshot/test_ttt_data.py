"""Leave-n-out episode construction for ARC and text tasks (pure Python)."""

import random
from itertools import chain

import pytest

from seal_engine.fewshot.arc import ArcPair, ArcTask
from seal_engine.fewshot.augment import Upscale, group_transforms
from seal_engine.fewshot.text_tasks import TextPair, TextTask
from seal_engine.fewshot.ttt_data import (
    Episode,
    arc_episodes,
    cap,
    dedupe,
    leave_n_out,
    text_episodes,
    usable_paraphrase,
)


def _grid(seed: int, h: int = 3, w: int = 3):
    rng = random.Random(seed)
    return tuple(tuple(rng.randint(0, 9) for _ in range(w)) for _ in range(h))


def _arc_task(n_train: int = 4, side: int = 3) -> ArcTask:
    train = tuple(ArcPair(_grid(i, side, side), _grid(100 + i, side, side)) for i in range(n_train))
    return ArcTask("t", train, (_grid(999, side, side),), (_grid(998, side, side),))


@pytest.mark.parametrize("n_pairs", [2, 3, 4, 6])
def test_leave_one_and_two_out_counts_and_queries(n_pairs):
    pairs = [f"p{i}" for i in range(n_pairs)]
    one = leave_n_out(pairs, 1)
    assert len(one) == n_pairs
    for i, e in enumerate(one):
        assert e.query == pairs[i]  # the held-out pair is the query
        assert e.query not in e.demos and len(e.demos) == n_pairs - 1
    two = leave_n_out(pairs, 2)
    assert len(two) == (n_pairs * (n_pairs - 1) if n_pairs >= 3 else 0)
    for e in two:
        assert e.query not in e.demos and len(e.demos) == n_pairs - 2 >= 1
    # Every (query, hidden pair) combination appears once.
    assert len({(e.query, e.demos) for e in two}) == len(two)


def test_leave_n_out_needs_n_at_least_one():
    with pytest.raises(ValueError):
        leave_n_out(["a", "b"], 0)


def test_arc_episodes_use_train_pairs_only():
    task = _arc_task(4)
    eps = arc_episodes(task, ["basic", "size", "chain", "translate", "mirror"], max_examples=10_000, seed=3)
    test_grids = set(task.test_inputs) | set(task.test_outputs)
    for e in eps:
        grids = set(chain.from_iterable(p.grids() for p in (*e.demos, e.query)))
        # No test grid leaks in (under any transform the tiny random grids never coincide).
        assert not grids & test_grids
    plain = [e for e in eps if e.note in ("leave1out", "leave2out")]
    # Un-augmented episodes: queries are original train pairs, demos a permutation of the rest.
    assert {e.query for e in plain} == set(task.train)
    for e in plain:
        assert set(e.demos) <= set(task.train) - {e.query}


def test_arc_episodes_are_augmented_colour_and_order_permuted():
    task = _arc_task(4)
    eps = arc_episodes(task, ["basic"], leave_out=[1], max_examples=10_000, seed=0)
    # 4 leave-one-out episodes x (identity + 7 symmetries) x (own colours + 1 recolouring)
    assert len(eps) == 4 * 8 * 2
    notes = {e.note for e in eps}
    assert "leave1out+rot90" in notes and "leave1out+rot90+colors" in notes and "leave1out+colors" in notes
    # Recolouring keeps the background: zero cells stay exactly where they were.
    def zeros(g):
        return tuple(tuple(c == 0 for c in row) for row in g)

    masks = {zeros(p.input) for p in task.train}
    recoloured = [e for e in eps if e.note == "leave1out+colors"]
    assert recoloured and all(zeros(e.query.input) in masks for e in recoloured)
    assert any(e.query not in task.train for e in recoloured)
    # Example permutation: some episode's demos are not in train order.
    idx = {p: i for i, p in enumerate(task.train)}
    assert any([idx[d] for d in e.demos] != sorted(idx[d] for d in e.demos) for e in eps if e.note == "leave1out")


def test_arc_episode_cap_dedupe_and_seed():
    task = _arc_task(5)
    full = arc_episodes(task, ["basic", "size"], max_examples=10_000, seed=1)
    capped = arc_episodes(task, ["basic", "size"], max_examples=25, seed=1)
    assert len(full) > 25 and len(capped) == 25
    assert capped == arc_episodes(task, ["basic", "size"], max_examples=25, seed=1)  # deterministic
    assert capped != arc_episodes(task, ["basic", "size"], max_examples=25, seed=2)
    # The un-augmented leave-n-out episodes are kept first when capping.
    base = 5 + 5 * 4
    assert sum(e.note in ("leave1out", "leave2out") for e in capped) == min(base, 25)
    assert len({e.key() for e in full}) == len(full)


def test_dedupe_and_cap_helpers():
    a, b = Episode(("x",), "y", "leave1out"), Episode(("x",), "y", "leave1out+rot90")
    assert dedupe([a, b]) == [a]  # same content: one kept, whatever its note
    eps = [Episode((str(i),), "q", "leave1out+t") for i in range(10)]
    kept = cap(eps, 4, random.Random(0))
    assert len(kept) == 4 and kept == sorted(kept, key=eps.index)


def test_oversized_grids_are_dropped():
    # 16x16 grids: doubling makes 32 > 30, so size/chain augmentations vanish.
    task = _arc_task(3, side=16)
    eps = arc_episodes(task, ["size", "chain"], max_examples=10_000)
    assert eps and all(len(g) <= 30 and len(g[0]) <= 30 for e in eps for p in (*e.demos, e.query) for g in p.grids())
    assert not any("upscale" in e.note or "tile" in e.note for e in eps)
    # 12x12 grids doubled are 24x24: kept.
    small = arc_episodes(_arc_task(3, side=12), ["size"], max_examples=10_000)
    assert any("upscale2x2" in e.note for e in small)
    assert len(Upscale(2, 2)(_grid(0, 15, 15))) == 30  # the boundary itself is allowed
    at_limit = arc_episodes(_arc_task(3, side=15), ["size"], max_examples=10_000)
    assert any("upscale2x2" in e.note for e in at_limit)


def test_unknown_group_names_select_nothing_here():
    # Validation of names happens in recipes; the builder ignores what it does not know.
    assert group_transforms(["nonsense"], random.Random(0)) == []


# --- text ----------------------------------------------------------------------------

def _text_task(n: int = 4) -> TextTask:
    train = tuple(TextPair(f"I have {i + 2} cats", str(i + 2)) for i in range(n))
    return TextTask("num", train, (TextPair("I have 99 cats", "99"),), 2, True)


def test_text_episodes_leave_out_and_no_test_leak():
    task = _text_task(4)
    eps = text_episodes(task, [], max_examples=1000)
    assert len(eps) == 4 + 12  # leave-one-out + leave-two-out, one order each
    for e in eps:
        assert e.query in task.train and e.query not in e.demos
        assert all(d in task.train for d in e.demos)
    assert text_episodes(task, [], leave_out=[1], max_examples=1000)[0].note == "leave1out"
    more = text_episodes(task, ["reorder"], max_examples=1000)
    assert len(eps) < len(more) <= 3 * len(eps)  # extra orders (duplicates removed)


def test_text_paraphrase_episodes_keep_outputs():
    task = _text_task(3)
    para = {p.input: [p.input.replace("I have", "There are"), "unrelated words"] for p in task.train}
    eps = text_episodes(task, ["paraphrase"], leave_out=[1], max_examples=1000, paraphrases=para, seed=0)
    reworded = [e for e in eps if e.note.endswith("+paraphrase")]
    assert len(reworded) == 3
    for e in reworded:
        for p in (*e.demos, e.query):
            assert p.input.startswith("There are")  # "unrelated words" lacks the number: dropped
            assert p.output in p.input
    # Without the group, paraphrases are not used.
    assert not any("paraphrase" in e.note for e in text_episodes(task, [], paraphrases=para))


@pytest.mark.parametrize("orig,para,out,ok", [
    ("I have 3 cats", "There are 3 cats", "3", True),
    ("I have 3 cats", "There are cats", "3", False),  # lost the extracted answer
    ("dog", "a dog", "blick", True),
    ("dog", "dog", "blick", False),  # not new
    ("dog", "", "blick", False),
    ("dog", "line one\nline two", "blick", False),
    ("dog", "x" * 100, "blick", False),  # rambling
])
def test_usable_paraphrase(orig, para, out, ok):
    assert usable_paraphrase(orig, para, out) is ok
