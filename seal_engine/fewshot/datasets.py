"""Few-shot task datasets for RL runs and benchmarks: ARC files, text-task files, the built-in suite.

- an ARC Kaggle challenges file (``{task_id: {"train": [...], "test": [...]}}``): the
  solutions are read from the file beside it whose name has ``solutions`` for
  ``challenges`` (the shared data's layout), or from ``solutions``;
- a text-task file: ``[{"name"?, "train": [{input, output}], "test": [{input, output}]}]``;
- ``builtin:text-suite``: the generated text-task suite (seed 0, what benchmarks evaluate);
  ``builtin:text-suite:SEED`` the same task families with other examples (e.g. to train
  a recipe writer on instances the benchmark does not use).

Only tasks with known held-out outputs can be rewarded; :func:`gradable` says which.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seal_engine.fewshot.arc import ArcTask, TaskError, task_from_dict
from seal_engine.fewshot.prompts import FewShotTask
from seal_engine.fewshot.text_tasks import TextTask, text_task, text_task_suite

BUILTIN_TEXT_SUITE = "builtin:text-suite"
TASK_KINDS = ("text", "arc")


def _solutions_beside(challenges: Path) -> Path | None:
    if "challenges" not in challenges.name:
        return None
    candidate = challenges.with_name(challenges.name.replace("challenges", "solutions"))
    return candidate if candidate.exists() else None


def text_tasks_from_list(data: Any) -> list[TextTask]:
    if not isinstance(data, list) or not data:
        raise TaskError("a text-task dataset is a non-empty list of {name?, train, test}")
    out = []
    for i, t in enumerate(data):
        if not isinstance(t, dict) or "train" not in t:
            raise TaskError(f"task {i}: needs 'train' (a list of {{input, output}})")
        try:
            out.append(text_task(str(t.get("name") or f"task{i}"), t["train"], t.get("test") or []))
        except TaskError as e:
            raise TaskError(f"task {i}: {e}") from None
    return out


def arc_tasks_from_dict(data: Any, solutions: dict | None = None) -> list[ArcTask]:
    if not isinstance(data, dict) or not data:
        raise TaskError("an ARC dataset is a non-empty {task_id: {train, test}} object")
    return [task_from_dict(str(name), d, (solutions or {}).get(name)) for name, d in data.items()]


def load_task_dataset(kind: str, source: str, solutions: str | None = None) -> list[FewShotTask]:
    """Tasks of ``kind`` ("text" or "arc") from a path or ``builtin:text-suite``; TaskError on bad input."""
    if kind not in TASK_KINDS:
        raise TaskError(f"unknown task kind {kind!r}; choose {' or '.join(TASK_KINDS)}")
    if source == BUILTIN_TEXT_SUITE or source.startswith(BUILTIN_TEXT_SUITE + ":"):
        if kind != "text":
            raise TaskError(f"{BUILTIN_TEXT_SUITE} is a text-task suite")
        seed = source[len(BUILTIN_TEXT_SUITE) + 1:] or "0"
        if not seed.isdigit():
            raise TaskError(f"{source!r}: the suite's seed is a whole number ({BUILTIN_TEXT_SUITE}:SEED)")
        return list(text_task_suite(int(seed)))
    path = Path(source).expanduser()
    data = _read_json(path)
    if kind == "text":
        return text_tasks_from_list(data)
    sol_path = Path(solutions).expanduser() if solutions else _solutions_beside(path)
    sols = _read_json(sol_path) if sol_path is not None else None
    if sols is not None and not isinstance(sols, dict):
        raise TaskError(f"{sol_path}: solutions are a {{task_id: [grid, ...]}} object")
    return arc_tasks_from_dict(data, sols)


def shared_task_files(data_dir: str | Path, split: str) -> tuple[Path, Path]:
    """(challenges, solutions) of the filtered_1B ``split`` ('training' or 'evaluation')."""
    tag = {"training": "training_set", "evaluation": "eval_set"}[split]
    d = Path(data_dir)
    return (d / f"arc-agi_{split}_challenges_filtered_1B_{tag}.json",
            d / f"arc-agi_{split}_solutions_filtered_1B_{tag}.json")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise TaskError(f"no such file: {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise TaskError(f"{path}: malformed JSON ({e})") from None


def tasks_from_uploads(kind: str, items: Sequence[Any]) -> list[FewShotTask]:
    """Tasks given inline as ``[{name?, train: [{input, output}], test: [{input, output?}]}]``
    (for ARC, the test outputs are the solutions when every one is given)."""
    if kind == "text":
        return text_tasks_from_list(list(items))
    if not items:
        raise TaskError("no tasks given")
    out: list[FewShotTask] = []
    for i, t in enumerate(items):
        if not isinstance(t, dict) or not isinstance(t.get("train"), list) or not isinstance(t.get("test", []), list):
            raise TaskError(f"task {i}: needs 'train' and 'test' lists")
        test = [x if isinstance(x, dict) else {} for x in t.get("test", [])]
        sols = [x.get("output") for x in test]
        out.append(task_from_dict(str(t.get("name") or f"task{i}"),
                                  {"train": t["train"], "test": [{"input": x.get("input")} for x in test]},
                                  sols if sols and all(s is not None for s in sols) else None))
    return out


def gradable(task: FewShotTask) -> bool:
    """Held-out outputs are known, so an adapted model can be rewarded on this task."""
    if isinstance(task, ArcTask):
        return task.test_outputs is not None
    return bool(task.test)


def task_to_dict(task: FewShotTask) -> dict:
    """JSON form (stored with RL runs of uploaded tasks); :func:`task_from_json` reads it back."""
    if isinstance(task, ArcTask):
        return {"kind": "arc", "name": task.name,
                "train": [{"input": [list(r) for r in p.input], "output": [list(r) for r in p.output]} for p in task.train],
                "test": [{"input": [list(r) for r in g]} for g in task.test_inputs],
                "solutions": [[list(r) for r in g] for g in task.test_outputs] if task.test_outputs else None}
    return {"kind": "text", "name": task.name, "train": [{"input": p.input, "output": p.output} for p in task.train],
            "test": [{"input": p.input, "output": p.output} for p in task.test]}


def task_from_json(d: dict) -> FewShotTask:
    if d.get("kind") == "arc":
        return task_from_dict(d["name"], {"train": d["train"], "test": d["test"]}, d.get("solutions"))
    return text_task(d["name"], d["train"], d.get("test") or [])


def pick(tasks: Sequence[FewShotTask], names: Sequence[str]) -> list[FewShotTask]:
    by = {t.name: t for t in tasks}
    missing = [n for n in names if n not in by]
    if missing:
        raise TaskError(f"unknown tasks: {', '.join(missing)}")
    return [by[n] for n in names]
