"""Grid augmentations: exact inverses (property tests), groups, grid text round trip."""

import random

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from seal_engine.fewshot.augment import (
    ARC_GROUPS,
    GEOMETRIC_OPS,
    IDENTITY,
    Chain,
    ColorMap,
    Geometric,
    Mirror,
    NotInvertible,
    Tile,
    Translate,
    Upscale,
    geometric,
    group_transforms,
    random_color_map,
)
from seal_engine.fewshot.grids import GridError, as_grid, grid_to_text, text_to_grid, text_tokens


@st.composite
def grids(draw, max_side: int = 9):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    cells = draw(st.lists(st.integers(0, 9), min_size=h * w, max_size=h * w))
    return tuple(tuple(cells[r * w : (r + 1) * w]) for r in range(h))


BIJECTIONS = [Geometric(op) for op in GEOMETRIC_OPS if op != "identity"] + [
    IDENTITY, Translate(1, 2), Translate(3, 0), Translate(-2, 5),
    Chain([Geometric("rot90"), Translate(1, 1), Geometric("flip_h")]),
]
LEFT_INVERTIBLE = [
    Upscale(2, 2), Upscale(2, 1), Upscale(1, 3), Tile(1, 2), Tile(2, 1), Tile(2, 2),
    Mirror(0), Mirror(1), Mirror(0, True), Mirror(1, True),
    Chain([Geometric("transpose"), Upscale(2, 2)]), Chain([Tile(2, 1), Geometric("rot270"), Mirror(1)]),
]


@pytest.mark.parametrize("t", BIJECTIONS + LEFT_INVERTIBLE, ids=repr)
@given(g=grids())
@hsettings(max_examples=60, deadline=None)
def test_every_transform_has_an_exact_inverse(t, g):
    out = t(g)
    assert as_grid(out, max_side=100) == out  # still a rectangular grid of 0-9
    assert t.invert(out) == g


@pytest.mark.parametrize("t", BIJECTIONS, ids=repr)
@given(g=grids())
@hsettings(max_examples=40, deadline=None)
def test_bijections_invert_any_grid(t, g):
    assert t(t.invert(g)) == g


@given(g=grids())
@hsettings(max_examples=40, deadline=None)
def test_geometric_ops_match_numpy(g):
    a = np.array(g)
    expected = {
        "rot90": np.rot90(a, 1), "rot180": np.rot90(a, 2), "rot270": np.rot90(a, 3), "flip_v": np.flipud(a),
        "flip_h": np.fliplr(a), "transpose": a.T, "anti_transpose": np.rot90(a, 2).T,
    }
    for op, want in expected.items():
        assert np.array_equal(np.array(Geometric(op)(g)), want), op


@given(g=grids(), dy=st.integers(-40, 40), dx=st.integers(-40, 40))
@hsettings(max_examples=60, deadline=None)
def test_translation_is_a_cyclic_shift_with_inverse(g, dy, dx):
    t = Translate(dy, dx)
    assert np.array_equal(np.array(t(g)), np.roll(np.array(g), (dy, dx), axis=(0, 1)))
    assert t.invert(t(g)) == g


@given(g=grids(), seed=st.integers(0, 10**6), keep=st.booleans())
@hsettings(max_examples=60, deadline=None)
def test_colour_permutation_inverse(g, seed, keep):
    cm = random_color_map(random.Random(seed), keep_background=keep)
    assert cm.invert(cm(g)) == g
    assert cm(cm.invert(g)) == g
    assert cm.inverse().inverse() == cm
    if keep:
        assert cm.mapping[0] == 0


def test_colour_map_must_be_a_permutation():
    with pytest.raises(ValueError):
        ColorMap((0, 1, 1, 3, 4, 5, 6, 7, 8, 9))


@given(g=grids(max_side=6), seed=st.integers(0, 10**6))
@hsettings(max_examples=40, deadline=None)
def test_random_chains_invert(g, seed):
    rng = random.Random(seed)
    pool = BIJECTIONS + LEFT_INVERTIBLE
    chain = Chain(rng.sample(pool, rng.randint(1, 3)))
    assert chain.invert(chain(g)) == g


def test_rotations_compose_and_views_are_distinct():
    g = ((1, 2, 3), (4, 5, 6))
    r = Geometric("rot90")
    assert r(r(r(r(g)))) == g
    assert Chain([r, r])(g) == Geometric("rot180")(g)
    views = {Geometric(op)(g) for op in GEOMETRIC_OPS if op != "identity"} | {g}
    assert len(views) == 8  # an asymmetric grid has 8 distinct symmetric images


@pytest.mark.parametrize("t,bad", [
    (Upscale(2, 2), ((1, 2), (1, 1))),  # blocks not uniform
    (Upscale(2, 2), ((1, 1, 1),)),  # odd size
    (Tile(1, 2), ((1, 2, 3, 4),)),  # halves differ
    (Mirror(1), ((1, 2, 3, 4),)),  # not a mirror image
    (Mirror(0), ((1,), (2,), (1,))),  # odd height
])
def test_size_transforms_refuse_grids_outside_their_image(t, bad):
    with pytest.raises(NotInvertible):
        t.invert(bad)


def test_groups_registry():
    rng = random.Random(0)
    assert set(ARC_GROUPS) == {"basic", "size", "mirror", "chain", "translate"}
    basic = group_transforms(["basic"], rng)
    assert {t.name for t in basic} == set(GEOMETRIC_OPS) - {"identity"}
    assert IDENTITY not in group_transforms(list(ARC_GROUPS), rng)
    trans = group_transforms(["translate"], random.Random(1))
    assert len(trans) == 2 and all(isinstance(t, Translate) for t in trans)
    assert group_transforms(["translate"], random.Random(1)) == trans  # seeded
    chain = group_transforms(["chain"], rng)
    assert all(isinstance(t, Chain) for t in chain)
    # Order follows the registry, not the request; duplicates collapse.
    both = group_transforms(["size", "basic", "basic"], random.Random(0))
    assert both[: len(basic)] == basic and len(both) == len(set(both))


def test_geometric_helper_identity():
    assert geometric("identity") is IDENTITY
    with pytest.raises(ValueError):
        Geometric("rot45")


# --- grids ---------------------------------------------------------------------------

@given(g=grids(max_side=30))
@hsettings(max_examples=60, deadline=None)
def test_grid_text_round_trip(g):
    text = grid_to_text(g)
    assert text_to_grid(text) == g
    assert text_to_grid(f"\n{text}\n\nchatter after a blank line") == g


def test_grid_text_is_one_digit_per_cell():
    assert grid_to_text(((0, 1), (2, 3))) == "01\n23"
    assert text_tokens(((0, 1), (2, 3))) == 5  # 4 digits + 1 newline


@pytest.mark.parametrize("text", ["", "12\n3", "1a\n22", "1 2\n3 4", "abc", "12\n34\nxy"])
def test_unparsable_grids_are_none(text):
    assert text_to_grid(text) is None


@pytest.mark.parametrize("obj,msg", [
    ([], "non-empty"),
    ([[1, 2], [3]], "rectangular"),
    ([[1, 10]], "0-9"),
    ([[1, -1]], "0-9"),
    ([[True]], "0-9"),
    ([[1.0]], "0-9"),
    ([["1"]], "0-9"),
    ([[0] * 31], "larger than 30x30"),
    ([[0]] * 31, "larger than 30x30"),
    ("12", "non-empty list of rows"),
])
def test_grid_validation(obj, msg):
    with pytest.raises(GridError, match=msg):
        as_grid(obj)


def test_valid_grid_becomes_tuples():
    assert as_grid([[0, 9], [3, 4]]) == ((0, 9), (3, 4))
    assert as_grid([[0] * 30] * 30)[29][29] == 0
