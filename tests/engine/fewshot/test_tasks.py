"""Task objects: ARC (Kaggle format) loading and validation, the text-task suite."""

import json

import pytest

from seal_engine.fewshot.arc import TaskError, query_text, task_from_dict, task_text
from seal_engine.fewshot.datasets import load_task_dataset, shared_task_files
from seal_engine.fewshot.grids import text_to_grid
from seal_engine.fewshot.text_tasks import SUITE_NAMES, SuiteOptions, text_task, text_task_suite
from tests.conftest import SHARED_DATA

ARC = SHARED_DATA / "arc"


@pytest.fixture(scope="module")
def arc_dir():
    if not ARC.exists():
        pytest.skip(f"shared data not found at {ARC}")
    return ARC


@pytest.mark.parametrize("split,count", [("training", 12), ("evaluation", 10)])
def test_shared_arc_tasks_load_with_solutions(arc_dir, split, count):
    tasks = load_task_dataset("arc", *map(str, shared_task_files(arc_dir, split)))
    assert len(tasks) == count
    for t in tasks:
        assert t.train and t.test_inputs and len(t.test_outputs) == len(t.test_inputs)
        assert all(len(g) <= 30 and len(g[0]) <= 30 for p in t.train for g in p.grids())


def test_arc_text_format(arc_dir):
    task = load_task_dataset("arc", *map(str, shared_task_files(arc_dir, "evaluation")))[0]
    text = query_text(task.train, task.test_inputs[0])
    assert text.endswith("out\n") and text.count("in\n") == len(task.train) + 1
    block = text.split("out\n")[1].split("\n\n")[0]
    assert text_to_grid(block) == task.train[0].output
    assert task_text(task).count("?") == len(task.test_inputs)


def test_arc_task_validation():
    good = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}
    t = task_from_dict("ok", good, [[[4]]])
    assert t.test_outputs == (((4,),),)
    assert task_from_dict("nosol", good).test_outputs is None
    with pytest.raises(TaskError, match="task bad: row 1 has 1 cells"):
        task_from_dict("bad", {**good, "train": [{"input": [[1, 2], [3]], "output": [[1]]}]})
    with pytest.raises(TaskError, match="not in Kaggle format"):
        task_from_dict("bad", {"train": []})
    with pytest.raises(TaskError, match="no train pairs"):
        task_from_dict("bad", {**good, "train": []})
    with pytest.raises(TaskError, match="2 solutions for 1 test inputs"):
        task_from_dict("bad", good, [[[1]], [[2]]])
    with pytest.raises(TaskError, match="int 0-9"):
        task_from_dict("bad", good, [[[12]]])


def test_load_tasks_from_files(tmp_path):
    ch, so = tmp_path / "c.json", tmp_path / "s.json"
    ch.write_text(json.dumps({"a": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}}))
    so.write_text(json.dumps({"a": [[[4]]]}))
    (t,) = load_task_dataset("arc", str(ch), str(so))
    assert t.name == "a" and t.test_outputs == (((4,),),)


def test_text_suite_is_deterministic_and_graded():
    suite = text_task_suite(seed=0)
    assert len(suite) >= 20 and [t.name for t in suite] == SUITE_NAMES
    assert suite == text_task_suite(seed=0)
    assert suite != text_task_suite(seed=1)
    assert {t.difficulty for t in suite} == {1, 2, 3}
    for t in suite:
        assert 3 <= len(t.train) <= 8 and len(t.test) == 10
        inputs = [p.input for p in (*t.train, *t.test)]
        assert len(set(inputs)) == len(inputs)  # no held-out input is a train input
        assert all(p.output for p in (*t.train, *t.test))


def test_text_suite_selection_and_rules():
    (t,) = text_task_suite(seed=5, options=SuiteOptions(names=["swap_first_last"], n_test=4))
    assert len(t.test) == 4
    for p in (*t.train, *t.test):
        a, b = p.input.split(), p.output.split()
        assert b[0] == a[-1] and b[-1] == a[0] and b[1:-1] == a[1:-1]


def test_user_text_task_validation():
    t = text_task("mine", [{"input": " a ", "output": "A"}, ["b", "B"]], [{"input": "c", "output": "C"}])
    assert [p.input for p in t.train] == ["a", "b"] and t.test[0].output == "C"
    with pytest.raises(TaskError, match="at least 2 examples"):
        text_task("x", [{"input": "a", "output": "A"}])
    with pytest.raises(TaskError, match="pair 1: needs an input and an output"):
        text_task("x", [{"input": "a", "output": "A"}, {"input": "b"}])
    with pytest.raises(TaskError, match="non-empty strings"):
        text_task("x", [{"input": "a", "output": "A"}, {"input": "b", "output": 3}])
