"""ARC tasks (Kaggle format) as typed objects, and their compact text form.

Challenges file: ``{task_id: {"train": [{"input", "output"}], "test": [{"input"}]}}``;
solutions file: ``{task_id: [output grid per test input]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from seal_engine.errors import InputError
from seal_engine.fewshot.augment import ColorMap, Transform
from seal_engine.fewshot.grids import Grid, GridError, as_grid, grid_to_text


class TaskError(InputError):
    pass


@dataclass(frozen=True)
class ArcPair:
    input: Grid
    output: Grid

    def map(self, f: Transform | ColorMap) -> ArcPair:
        return ArcPair(f(self.input), f(self.output))

    def grids(self) -> tuple[Grid, Grid]:
        return self.input, self.output


@dataclass(frozen=True)
class ArcTask:
    name: str
    train: tuple[ArcPair, ...]
    test_inputs: tuple[Grid, ...]
    test_outputs: tuple[Grid, ...] | None = None  # None when the solutions are unknown

    @property
    def kind(self) -> str:
        return "arc"


def task_from_dict(name: str, data: dict, solutions: Sequence | None = None) -> ArcTask:
    """One task from its Kaggle dict (and its solution list); TaskError names the bad part."""
    try:
        train = tuple(ArcPair(as_grid(p["input"]), as_grid(p["output"])) for p in data["train"])
        tests = [t["input"] for t in data["test"]]
        test_inputs = tuple(as_grid(t) for t in tests)
        outs = None
        if solutions is not None:
            if len(solutions) != len(test_inputs):
                raise TaskError(f"{len(solutions)} solutions for {len(test_inputs)} test inputs")
            outs = tuple(as_grid(s) for s in solutions)
        elif all("output" in t for t in data["test"]):
            outs = tuple(as_grid(t["output"]) for t in data["test"])
    except (KeyError, TypeError) as e:
        raise TaskError(f"task {name}: not in Kaggle format ({e!r})") from None
    except GridError as e:
        raise TaskError(f"task {name}: {e}") from None
    if not train:
        raise TaskError(f"task {name}: no train pairs")
    if not test_inputs:
        raise TaskError(f"task {name}: no test inputs")
    return ArcTask(name, train, test_inputs, outs)


# The text the solver sees: demonstrations then the query input, "in"/"out" headers,
# one digit per cell. Kept minimal: a 30x30 grid is already 930 tokens.
def pair_text(pair: ArcPair) -> str:
    return f"in\n{grid_to_text(pair.input)}\nout\n{grid_to_text(pair.output)}\n"


def query_text(demos: Sequence[ArcPair], query_input: Grid) -> str:
    """Demonstrations and the query input, ending where the output grid starts."""
    return "\n".join(pair_text(p) for p in demos) + f"\nin\n{grid_to_text(query_input)}\nout\n"


def task_text(task: ArcTask) -> str:
    """The task's train pairs and test inputs (for the recipe writer)."""
    parts = [pair_text(p) for p in task.train]
    parts += [f"in\n{grid_to_text(t)}\nout\n?\n" for t in task.test_inputs]
    return "\n".join(parts)
