"""Grid augmentations with exact inverses, and the named groups a recipe selects.

Every transform here is left-invertible: ``t.invert(t(g)) == g`` for every grid g.
The geometric ones (the 8 symmetries of the square), translations and colour maps are
bijections, so ``t(t.invert(g)) == g`` too. The size-changing ones (upscaling,
tiling, mirroring) map onto a subset of grids: ``invert`` of a grid outside that image
raises :class:`NotInvertible` (a model answer that is not, say, a clean 2x upscale is
not mapped back to anything).

An ARC augmentation applies the same transform to every grid of a task, inputs and
outputs alike, so the rule relating them is transformed consistently.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from seal_engine.fewshot.grids import Grid


class NotInvertible(ValueError):
    pass


class Transform:
    """A named grid transform. Equality and hashing go by name (names encode parameters)."""

    name: str = "identity"

    def __call__(self, grid: Grid) -> Grid:
        return grid

    def invert(self, grid: Grid) -> Grid:
        return grid

    def __repr__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


IDENTITY = Transform()


# The dihedral group of the square, as pure-Python ops on tuples of rows.
def _transpose(g: Grid) -> Grid:
    return tuple(zip(*g))


def _flip_v(g: Grid) -> Grid:  # upside down
    return g[::-1]


def _flip_h(g: Grid) -> Grid:  # left-right
    return tuple(row[::-1] for row in g)


_D4: dict[str, Callable[[Grid], Grid]] = {
    "rot90": lambda g: _flip_v(_transpose(g)),  # counter-clockwise, as numpy.rot90
    "rot180": lambda g: _flip_v(_flip_h(g)),
    "rot270": lambda g: _flip_h(_transpose(g)),
    "flip_v": _flip_v,
    "flip_h": _flip_h,
    "transpose": _transpose,  # reflection in the main diagonal
    "anti_transpose": lambda g: _flip_v(_flip_h(_transpose(g))),  # reflection in the anti-diagonal
}
_D4_INVERSE = {"rot90": "rot270", "rot270": "rot90"}
GEOMETRIC_OPS = ("identity", *_D4)


class Geometric(Transform):
    def __init__(self, op: str) -> None:
        if op not in _D4:
            raise ValueError(f"unknown geometric op {op!r}")
        self.name = op

    def __call__(self, grid: Grid) -> Grid:
        return _D4[self.name](grid)

    def invert(self, grid: Grid) -> Grid:
        return _D4[_D4_INVERSE.get(self.name, self.name)](grid)


class Upscale(Transform):
    """Each cell becomes an fy x fx block (resolution, height or width increase)."""

    def __init__(self, fy: int, fx: int) -> None:
        if fy < 1 or fx < 1 or fy * fx == 1:
            raise ValueError("an upscale needs factors >= 1, not both 1")
        self.fy, self.fx = fy, fx
        self.name = f"upscale{fy}x{fx}"

    def __call__(self, grid: Grid) -> Grid:
        return tuple(tuple(v for v in row for _ in range(self.fx)) for row in grid for _ in range(self.fy))

    def invert(self, grid: Grid) -> Grid:
        small = tuple(row[:: self.fx] for row in grid[:: self.fy])
        if not small or not small[0] or self(small) != grid:
            raise NotInvertible(f"not a {self.name} of any grid")
        return small


class Tile(Transform):
    """The grid repeated ny times down and nx times across."""

    def __init__(self, ny: int, nx: int) -> None:
        if ny < 1 or nx < 1 or ny * nx == 1:
            raise ValueError("a tiling needs counts >= 1, not both 1")
        self.ny, self.nx = ny, nx
        self.name = f"tile{ny}x{nx}"

    def __call__(self, grid: Grid) -> Grid:
        return tuple(row * self.nx for row in grid) * self.ny

    def invert(self, grid: Grid) -> Grid:
        h, w = len(grid), len(grid[0]) if grid else 0
        if h % self.ny or w % self.nx:
            raise NotInvertible(f"not a {self.name} of any grid")
        small = tuple(row[: w // self.nx] for row in grid[: h // self.ny])
        if self(small) != grid:
            raise NotInvertible(f"not a {self.name} of any grid")
        return small


class Mirror(Transform):
    """The grid joined with its mirror image, below (axis 0) or to the right (axis 1);
    ``first`` puts the mirror image first."""

    def __init__(self, axis: int, first: bool = False) -> None:
        if axis not in (0, 1):
            raise ValueError("axis is 0 or 1")
        self.axis, self.first = axis, first
        self.name = f"mirror{'_v' if axis == 0 else '_h'}{'_first' if first else ''}"

    def __call__(self, grid: Grid) -> Grid:
        if self.axis == 0:
            m = _flip_v(grid)
            return m + grid if self.first else grid + m
        m = _flip_h(grid)
        return tuple((b + a) if self.first else (a + b) for a, b in zip(grid, m))

    def invert(self, grid: Grid) -> Grid:
        h, w = len(grid), len(grid[0]) if grid else 0
        if (h if self.axis == 0 else w) % 2:
            raise NotInvertible(f"not a {self.name} of any grid")
        if self.axis == 0:
            half = grid[h // 2 :] if self.first else grid[: h // 2]
        else:
            half = tuple(row[w // 2 :] if self.first else row[: w // 2] for row in grid)
        if self(half) != grid:
            raise NotInvertible(f"not a {self.name} of any grid")
        return half


class Translate(Transform):
    """A cyclic shift by (dy, dx) cells (wrapping around), the same for every grid."""

    def __init__(self, dy: int, dx: int) -> None:
        self.dy, self.dx = dy, dx
        self.name = f"translate{dy},{dx}"

    @staticmethod
    def _roll(grid: Grid, dy: int, dx: int) -> Grid:
        h, w = len(grid), len(grid[0])
        dy, dx = dy % h, dx % w
        rows = grid[-dy:] + grid[:-dy] if dy else grid
        return tuple(row[-dx:] + row[:-dx] for row in rows) if dx else rows

    def __call__(self, grid: Grid) -> Grid:
        return self._roll(grid, self.dy, self.dx)

    def invert(self, grid: Grid) -> Grid:
        return self._roll(grid, -self.dy, -self.dx)


class Chain(Transform):
    """Transforms applied left to right; inverted right to left."""

    def __init__(self, parts: Sequence[Transform]) -> None:
        if not parts:
            raise ValueError("an empty chain")
        self.parts = tuple(parts)
        self.name = "+".join(p.name for p in self.parts)

    def __call__(self, grid: Grid) -> Grid:
        for p in self.parts:
            grid = p(grid)
        return grid

    def invert(self, grid: Grid) -> Grid:
        for p in reversed(self.parts):
            grid = p.invert(grid)
        return grid


@dataclass(frozen=True)
class ColorMap:
    """A permutation of the colours 0-9 (``mapping[c]`` is the new colour of c)."""

    mapping: tuple[int, ...]

    def __post_init__(self) -> None:
        if sorted(self.mapping) != list(range(10)):
            raise ValueError("a colour map is a permutation of 0-9")

    def __call__(self, grid: Grid) -> Grid:
        m = self.mapping
        return tuple(tuple(m[v] for v in row) for row in grid)

    def inverse(self) -> ColorMap:
        inv = [0] * 10
        for c, new in enumerate(self.mapping):
            inv[new] = c
        return ColorMap(tuple(inv))

    def invert(self, grid: Grid) -> Grid:
        return self.inverse()(grid)


IDENTITY_COLORS = ColorMap(tuple(range(10)))


def random_color_map(rng: random.Random, keep_background: bool = True) -> ColorMap:
    """A random permutation of the colours; 0 (the background in most ARC tasks) stays 0 by default."""
    colors = list(range(1, 10) if keep_background else range(10))
    shuffled = colors[:]
    rng.shuffle(shuffled)
    mapping = list(range(10))
    for c, new in zip(colors, shuffled):
        mapping[c] = new
    return ColorMap(tuple(mapping))


def geometric(op: str) -> Transform:
    return IDENTITY if op == "identity" else Geometric(op)


def _translations(rng: random.Random, n: int = 2) -> list[Transform]:
    out: list[Transform] = []
    while len(out) < n:
        t = Translate(rng.randint(0, 3), rng.randint(0, 3))
        if (t.dy, t.dx) != (0, 0) and t not in out:
            out.append(t)
    return out


_UP2 = Upscale(2, 2)

# Named augmentation groups a recipe can select. Each entry gives the group's transforms
# for one task (random ones draw from the task's rng, so every grid of a task shares them).
ARC_GROUPS: dict[str, tuple[str, Callable[[random.Random], list[Transform]]]] = {
    "basic": (
        "rotations by 90/180/270 degrees, flips, transpose and anti-transpose",
        lambda rng: [Geometric(op) for op in _D4],
    ),
    "size": (
        "each cell doubled (resolution, height or width increase) and the grid repeated (tiling)",
        lambda rng: [_UP2, Upscale(2, 1), Upscale(1, 2), Tile(1, 2), Tile(2, 1), Tile(2, 2)],
    ),
    "mirror": (
        "the grid joined with its mirror image, below or beside it",
        lambda rng: [Mirror(0), Mirror(1), Mirror(0, True), Mirror(1, True)],
    ),
    "chain": (
        "a rotation, flip or transpose followed by doubling the resolution",
        lambda rng: [Chain([Geometric(op), _UP2]) for op in ("rot90", "rot180", "rot270", "flip_v", "flip_h", "transpose")],
    ),
    "translate": (
        "the content shifted by a few cells, wrapping around the edges",
        lambda rng: _translations(rng),
    ),
}


def group_transforms(groups: Sequence[str], rng: random.Random) -> list[Transform]:
    """The distinct transforms of ``groups`` (in registry order), identity not included."""
    out: list[Transform] = []
    for name in ARC_GROUPS:
        if name in groups:
            for t in ARC_GROUPS[name][1](rng):
                if t not in out:
                    out.append(t)
    return out


def permuted(items: Sequence, rng: random.Random) -> tuple:
    """``items`` in a random order (example permutation)."""
    out = list(items)
    rng.shuffle(out)
    return tuple(out)
