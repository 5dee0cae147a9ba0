"""ARC grids: validation and the compact text format the model reads and writes.

A grid is a tuple of rows, each a tuple of ints 0-9: immutable and hashable, so
augmented tasks can be deduplicated and model answers counted in a vote.

Text format: one digit per cell, one row per line, no separators. The default
tokenizer splits digits into single tokens, so a h x w grid costs h * (w + 1)
tokens (a space-separated or Python-list format costs about twice that).
"""

from __future__ import annotations

from collections.abc import Sequence

from seal_engine.errors import InputError

Grid = tuple[tuple[int, ...], ...]

MAX_SIDE = 30  # ARC's largest grid; augmented grids beyond it are dropped


class GridError(InputError):
    pass


def as_grid(obj: object, *, max_side: int = MAX_SIDE) -> Grid:
    """A validated grid from nested sequences (e.g. JSON lists); GridError says what is wrong."""
    if not isinstance(obj, Sequence) or isinstance(obj, (str, bytes)) or not obj:
        raise GridError("a grid is a non-empty list of rows")
    rows = []
    width = None
    for r, row in enumerate(obj):
        if not isinstance(row, Sequence) or isinstance(row, (str, bytes)) or not row:
            raise GridError(f"row {r} is not a non-empty list")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise GridError(f"row {r} has {len(row)} cells, row 0 has {width} (grids are rectangular)")
        for c, v in enumerate(row):
            # bool is an int subclass; True is not a colour.
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 9:
                raise GridError(f"cell ({r}, {c}) is {v!r}, not an int 0-9")
        rows.append(tuple(row))
    if len(rows) > max_side or (width or 0) > max_side:
        raise GridError(f"grid is {len(rows)}x{width}, larger than {max_side}x{max_side}")
    return tuple(rows)


def shape(grid: Grid) -> tuple[int, int]:
    return len(grid), len(grid[0])


def fits(grid: Grid, max_side: int = MAX_SIDE) -> bool:
    return len(grid) <= max_side and len(grid[0]) <= max_side


def grid_to_text(grid: Grid) -> str:
    return "\n".join("".join(map(str, row)) for row in grid)


def text_to_grid(text: str) -> Grid | None:
    """Parse a grid the model wrote; None unless it is a clean rectangular digit block.

    Blank lines around the block are ignored; the block ends at the first blank line
    after it (anything after that is chatter).
    """
    lines = text.strip().split("\n")
    rows: list[tuple[int, ...]] = []
    for line in lines:
        line = line.strip()
        if not line:
            break
        if not line.isdigit() or not line.isascii():
            return None
        rows.append(tuple(int(ch) for ch in line))
    if not rows or any(len(r) != len(rows[0]) for r in rows):
        return None
    return tuple(rows)


def text_tokens(grid: Grid) -> int:
    """Tokens of ``grid_to_text`` under a digit-splitting tokenizer (plus the newlines)."""
    h, w = shape(grid)
    return h * (w + 1) - 1
