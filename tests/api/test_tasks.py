"""Few-shot tasks over HTTP: validation, tenancy, recipe-policy promotion, task RL runs, and
(slow) a real task job: test-time training, held-out grades, /solve and the OpenAI endpoint."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig

from seal_engine.core.lora import LoraAdapter
from seal_service.db.models import PolicyCheckpoint
from seal_service.db.session import session_scope
from tests.conftest import SHARED_DATA, TEST_DATA_DIR
from tests.support.service import api_client, bearer, new_key, service_settings
from workers.adaptation.run import run_adaptation

UPPER = [{"input": w, "output": w.upper()} for w in ("apple", "river", "candle", "garden", "pencil")]
HELD = [{"input": w, "output": w.upper()} for w in ("window", "rocket")]
# A made-up suffix: the tiny model does not pick it up in context (0 of 4 held-out inputs, measured) and
# learns it in 12 training steps (3 of 4, and the suffix on every new input).
SUFFIX = [{"input": w, "output": f"{w}-zop"} for w in ("apple", "river", "candle", "garden", "pencil")]
SUFFIX_HELD = [{"input": w, "output": f"{w}-zop"} for w in ("window", "rocket", "basket", "mirror")]
GRID_TASK = {"train": [{"input": [[1, 0], [0, 0]], "output": [[0, 1], [0, 0]]},
                       {"input": [[0, 0], [2, 0]], "output": [[0, 0], [0, 2]]}],
             "test": [{"input": [[3, 0], [0, 0]], "output": [[0, 3], [0, 0]]}]}


@pytest.fixture
def svc(tmp_path):
    settings = service_settings(tmp_path, TEST_DATA_DIR, job_lease_s=5.0)
    with api_client(settings) as client:
        yield SimpleNamespace(client=client, settings=settings, tmp=tmp_path, h=bearer(new_key(settings, "acme")),
                              other=bearer(new_key(settings, "globex")),
                              admin=bearer(new_key(settings, "ops", admin=True)))


@pytest.mark.parametrize("body,param", [
    ({"train": UPPER[:1]}, "train"),  # too few examples
    ({"train": [{"input": "a"}, {"input": "b", "output": "B"}]}, "train.0"),  # no output
    ({"train": [*UPPER[:2], {"input": "x", "output": "X", "why": 1}]}, "train.2"),  # unknown field
    ({"train": [{"input": "", "output": "A"}, *UPPER[:2]]}, "train.0.input"),
    ({"train": UPPER, "test": [{"input": "window"}]}, "test"),  # text held-out needs outputs
    ({"train": GRID_TASK["train"]}, "test"),  # ARC needs a test input
    ({"train": [{"input": [[1, 12]], "output": [[1]]}, *GRID_TASK["train"]], "test": GRID_TASK["test"]},
     "train.0.input"),
    ({"train": [{"input": [[1, 2], [3]], "output": [[1]]}, *GRID_TASK["train"]], "test": GRID_TASK["test"]},
     "train.0.input"),
    ({"train": UPPER, "recipe": {"augmentations": ["rot90"], "loss": "output", "learning_rate": 1e-3, "epochs": 2}},
     "recipe"),  # a grid augmentation for a text task
    ({"train": UPPER, "recipe": {"augmentations": [], "loss": "output", "learning_rate": 5.0, "epochs": 2}}, "recipe"),
    ({"train": UPPER, "recipe": {"augmentations": [], "loss": "some", "learning_rate": 1e-3, "epochs": 2}}, "recipe"),
    ({"train": UPPER, "num_recipes": 0}, "num_recipes"),
])
def test_bad_tasks_are_422_with_the_field(svc, body, param):
    r = svc.client.post("/v1/tasks", headers=svc.h, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_a_task_job_is_queued_and_private(svc):
    r = svc.client.post("/v1/tasks", headers=svc.h, json={"name": "upper", "train": UPPER, "test": HELD})
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["object"] == "task" and out["format"] == "text" and out["status"] == "queued"
    assert (out["num_train"], out["num_test"], out["num_recipes"]) == (5, 2, 1)
    assert r.headers["location"] == f"/v1/tasks/{out['id']}"
    assert svc.client.get(f"/v1/tasks/{out['id']}", headers=svc.h).json()["id"] == out["id"]
    assert svc.client.get(f"/v1/tasks/{out['id']}", headers=svc.other).status_code == 404
    assert [t["id"] for t in svc.client.get("/v1/tasks", headers=svc.h).json()["data"]] == [out["id"]]
    assert svc.client.get("/v1/tasks", headers=svc.other).json()["data"] == []
    r = svc.client.post(f"/v1/tasks/{out['id']}/solve", headers=svc.h, json={"inputs": ["lamp"]})
    assert r.status_code == 409 and r.json()["error"]["code"] == "task_not_ready"
    grid = svc.client.post("/v1/tasks", headers=svc.h, json=GRID_TASK)
    assert grid.status_code == 202 and grid.json()["format"] == "arc"
    # A document adaptation is not a task.
    doc = svc.client.post("/v1/adaptations", headers=svc.h, json={"documents": [{"text": "Zorblax is green."}]})
    assert svc.client.get(f"/v1/tasks/{doc.json()['id']}", headers=svc.h).status_code == 404
    assert svc.client.post(f"/v1/tasks/{out['id']}/cancel", headers=svc.h).json()["status"] == "cancelled"


def _checkpoint(svc, pid: str, strategy: str) -> None:
    path = svc.tmp / "policies" / pid
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    LoraAdapter(cfg, {"base_model.model.m.q_proj.lora_A.weight": torch.ones(2, 4)}).save(path)
    with session_scope(svc.settings.resolved_database_url) as db:
        db.add(PolicyCheckpoint(id=pid, base_model=svc.settings.model_id, strategy=strategy, iteration=1,
                                storage_path=str(path), metrics={}))


def test_recipe_writers_and_self_edit_writers_are_promoted_separately(svc):
    _checkpoint(svc, "pol_recipes", "recipe-text")
    _checkpoint(svc, "pol_edits", "implications")
    for pid in ("pol_recipes", "pol_edits"):
        assert svc.client.post(f"/v1/admin/policies/{pid}/promote", headers=svc.admin).status_code == 200
    listed = {p["id"]: p["promoted"] for p in svc.client.get("/v1/admin/policies", headers=svc.admin).json()["data"]}
    assert listed == {"pol_recipes": True, "pol_edits": True}  # one per family
    task = svc.client.post("/v1/tasks", headers=svc.h, json={"train": UPPER}).json()
    assert task["policy_id"] == "pol_recipes"
    arc = svc.client.post("/v1/tasks", headers=svc.h, json=GRID_TASK).json()
    assert arc["policy_id"] is None  # no ARC recipe writer promoted
    doc = svc.client.post("/v1/adaptations", headers=svc.h, json={"documents": [{"text": "Zorblax is green."}]}).json()
    assert doc["policy_id"] == "pol_edits"
    given = svc.client.post("/v1/tasks", headers=svc.h, json={
        "train": UPPER, "recipe": {"augmentations": [], "loss": "output", "learning_rate": 1e-3, "epochs": 2}}).json()
    assert given["policy_id"] is None  # a given recipe is not written by anyone


def test_task_rl_runs_validate_their_tasks(svc):
    base = {"task": "text", "passages": 2, "samples": 2, "iterations": 1}
    r = svc.client.post("/v1/admin/rl-runs", headers=svc.admin, json={**base, "dataset": "builtin:text-suite"})
    assert r.status_code == 202, r.text
    assert r.json()["strategy"] == "recipe-text"
    uploaded = [{"name": "upper", "train": UPPER, "test": HELD}]
    assert svc.client.post("/v1/admin/rl-runs", headers=svc.admin, json={**base, "tasks": uploaded}).status_code == 202
    arc_train = SHARED_DATA / "arc" / "arc-agi_training_challenges_filtered_1B_training_set.json"
    if arc_train.exists():
        r = svc.client.post("/v1/admin/rl-runs", headers=svc.admin, json={**base, "task": "arc", "dataset": str(arc_train)})
        assert r.status_code == 202, r.text
    broken = svc.tmp / "broken_challenges.json"
    broken.write_text('{"t": {"train": [{"input": [[1]], "output": [[1]]}], "test": [{"input": [[1]]}]}}')
    (svc.tmp / "broken_solutions.json").write_text("{oops")
    for bad in [{"task": "arc", "dataset": str(broken)}, {"dataset": "builtin:text-suite", "repeats": 2}, {"task": "arc", "dataset": "builtin:text-suite"},
                {"documents": [{"text": "x", "questions": [{"question": "q", "answer": "a"}]}]},
                {"tasks": [{"name": "no-heldout", "train": UPPER}]}, {"tasks": [{"train": UPPER[:1], "test": HELD}]},
                {"dataset": str(Path("/nonexistent/tasks.json"))}, {"task": "poems", "dataset": "builtin:text-suite"}]:
        body = {**base, **bad}
        r = svc.client.post("/v1/admin/rl-runs", headers=svc.admin, json=body)
        assert r.status_code == 422, (bad, r.text)


@pytest.mark.slow
def test_a_real_task_job_learns_the_task_grades_and_solves(svc, bundle):
    recipe = {"augmentations": [], "loss": "output", "learning_rate": 1e-3, "epochs": 3}
    r = svc.client.post("/v1/tasks", headers=svc.h, json={"name": "zop", "train": SUFFIX, "test": SUFFIX_HELD,
                                                           "recipe": recipe, "seed": 1})
    job_id = r.json()["id"]
    assert run_adaptation(svc.settings, job_id, bundle_fn=lambda _s: bundle) == "succeeded"
    out = svc.client.get(f"/v1/tasks/{job_id}", headers=svc.h).json()
    m = out["metrics"]
    assert out["status"] == "succeeded" and out["adapter_id"]
    assert m["recipe_source"] == "given" and m["recipe"]["epochs"] == 3
    assert m["train_loss_last"] < m["train_loss_first"]
    assert [x["text"] for x in out["recipes"]] and out["recipes"][0]["strategy"] == "recipe-text"
    # The adapter learned the task: held-out inputs (exact match) answered far better than in context.
    heldout = m["heldout"]
    assert heldout["metric"] == "exact match"
    assert heldout["adapted"] >= 0.5 and heldout["adapted"] >= heldout["in_context"] + 0.5, heldout
    solved = svc.client.post(f"/v1/tasks/{job_id}/solve", headers=svc.h, json={"inputs": ["lamp", "violin"]})
    assert solved.status_code == 200, solved.text
    outputs = solved.json()["outputs"]
    assert len(outputs) == 2 and all(o.endswith("-zop") for o in outputs), outputs  # the rule, on new inputs
    bad = svc.client.post(f"/v1/tasks/{job_id}/solve", headers=svc.h, json={"inputs": [[[1]]]})
    assert bad.status_code == 422
    # The adapter is a model like any other for the OpenAI-compatible endpoints.
    r = svc.client.post("/v1/completions", headers=svc.h, json={"model": out["adapter_id"], "prompt": "Input: lamp\nOutput:",
                                                                 "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200, r.text
