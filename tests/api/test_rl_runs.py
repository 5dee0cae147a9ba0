"""RL on the service: policy checkpoints are listable, admin-only, and a promoted one writes later self-edits."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig

from seal_engine.core.lora import LoraAdapter
from seal_service.db.models import AdaptationJob, Adapter, PolicyCheckpoint, SelfEdit
from seal_service.db.session import session_scope
from tests.conftest import SHARED_DATA, TEST_DATA_DIR
from tests.support.fake_engine import DOCS, FakeEngine
from tests.support.service import api_client, bearer, new_key, service_settings
from workers.adaptation.run import run_adaptation


@pytest.fixture
def svc(tmp_path):
    settings = service_settings(tmp_path, TEST_DATA_DIR, job_lease_s=2.0)
    with api_client(settings) as client:
        yield SimpleNamespace(client=client, settings=settings, tmp=tmp_path,
                              h=bearer(new_key(settings, "acme")), admin=bearer(new_key(settings, "ops", admin=True)))


def _checkpoint(svc, pid: str, *, weights: bool = True, strategy: str = "self-qa", fill: float = 1.0) -> None:
    path = svc.tmp / "policies" / pid
    if weights:
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
        LoraAdapter(cfg, {"base_model.model.m.q_proj.lora_A.weight": torch.full((2, 4), fill)}).save(path)
    with session_scope(svc.settings.resolved_database_url) as db:
        db.add(PolicyCheckpoint(id=pid, base_model=svc.settings.model_id, strategy=strategy, iteration=1,
                                storage_path=str(path), metrics={"mean_reward": 0.5}))


class PolicyEngine(FakeEngine):
    def adapt(self, bundle, docs, settings, *, policy=None, **kw):
        self.policy = policy
        return super().adapt(bundle, docs, settings, **kw)


def test_policies_are_admin_only(svc):
    _checkpoint(svc, "pol_a")
    assert svc.client.get("/v1/admin/policies", headers=svc.h).status_code == 403
    assert svc.client.post("/v1/admin/policies/pol_a/promote", headers=svc.h).status_code == 403
    out = svc.client.get("/v1/admin/policies", headers=svc.admin).json()
    assert [p["id"] for p in out["data"]] == ["pol_a"] and out["data"][0]["promoted"] is False
    assert svc.client.post("/v1/admin/policies/nope/promote", headers=svc.admin).status_code == 404
    _checkpoint(svc, "pol_empty", weights=False)
    assert svc.client.post("/v1/admin/policies/pol_empty/promote", headers=svc.admin).status_code == 409


def test_promotion_changes_the_policy_of_later_adaptations(svc):
    def job() -> str:
        r = svc.client.post("/v1/adaptations", headers=svc.h, json={"documents": DOCS, "num_self_edits": 2})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    before = job()
    _checkpoint(svc, "pol_a", fill=1.0)
    _checkpoint(svc, "pol_b", fill=2.0, strategy="implications")
    r = svc.client.post("/v1/admin/policies/pol_a/promote", headers=svc.admin)
    assert r.status_code == 200 and r.json()["promoted"] is True
    with_a = job()
    assert svc.client.post("/v1/admin/policies/pol_b/promote", headers=svc.admin).status_code == 200
    with_b = job()
    listed = {p["id"]: p["promoted"] for p in svc.client.get("/v1/admin/policies", headers=svc.admin).json()["data"]}
    assert listed == {"pol_a": False, "pol_b": True}

    seen = {}
    for job_id, want in [(before, None), (with_a, "pol_a"), (with_b, "pol_b")]:
        out = svc.client.get(f"/v1/adaptations/{job_id}", headers=svc.h).json()
        assert out["policy_id"] == want
        eng = PolicyEngine(svc.settings)
        assert run_adaptation(svc.settings, job_id, adapt_fn=eng.adapt, bundle_fn=eng.bundle, save_fn=eng.save) == "succeeded"
        seen[job_id] = eng.policy
        with session_scope(svc.settings.resolved_database_url) as db:
            row = db.get(AdaptationJob, job_id)
            assert db.query(Adapter).filter_by(job_id=job_id).one().policy_id == want
            assert {e.policy_id for e in db.query(SelfEdit).filter_by(job_id=job_id)} == {want}
            if want == "pol_a":
                assert row.strategy == "self-qa"  # the policy's own prompt strategy
    assert seen[before] is None
    # The worker applied the promoted checkpoint's weights when writing the self-edits.
    [a] = seen[with_a].state.values()
    [b] = seen[with_b].state.values()
    assert float(a.mean()) == 1.0 and float(b.mean()) == 2.0


TRAIN = SHARED_DATA / "squad" / "train.json"
# The smallest run with every kind of unit (what is under test is the run's bookkeeping, not what it learns).
TINY = {"passages": 2, "samples": 2, "repeats": 1, "iterations": 1, "max_questions": 2, "retention_probes": 4,
        "lora": {"epochs": 1}, "sampling": {"max_new_tokens": 32}, "sft": {"epochs": 1, "learning_rate": 1e-3}}


def test_rl_runs_are_admin_only_and_validated(svc):
    body = {**TINY, "dataset": str(TRAIN)}
    assert svc.client.post("/v1/admin/rl-runs", headers=svc.h, json=body).status_code == 403
    assert svc.client.get("/v1/admin/rl-runs", headers=svc.h).status_code == 403
    for bad in [{"samples": 0}, {"repeats": 0}, {"passages": 0}, {"dataset": str(svc.tmp / "nope.json")},
                {"strategy": "nonsense"}, {"documents": [{"text": "x", "questions": []}]}, {"dataset": None},
                {"lora": {"rank": 0}}, {"surprise": 1}, {"reward": "vibes"}, {"task": "text", "reward": "likelihood"}]:
        r = svc.client.post("/v1/admin/rl-runs", headers=svc.admin, json={**body, **bad})
        assert r.status_code == 422, (bad, r.text)
    r = svc.client.post("/v1/admin/rl-runs", headers=svc.admin, json={**body, "reward": "vibes"})
    assert r.json()["error"]["param"] == "reward", r.text
    assert svc.client.get("/v1/admin/rl-runs/rl_missing", headers=svc.admin).status_code == 404


@pytest.mark.slow
def test_tiny_rl_run_through_the_api_survives_a_lost_worker(svc, bundle):
    import time

    from workers.rl import jobs as rl_jobs

    if not TRAIN.exists():
        pytest.skip(f"no {TRAIN}")
    r = svc.client.post("/v1/admin/rl-runs", headers=svc.admin, json={**TINY, "dataset": str(TRAIN)})
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    sent: list[tuple[str, list]] = []

    def deliver(kind: str, args: list) -> str:
        fn = rl_jobs.step if kind == "step" else rl_jobs.evaluate
        return fn(svc.settings, *args, lambda k, a: sent.append((k, a)), worker="test", bundle_fn=lambda _s: bundle)

    t0 = time.perf_counter()
    assert deliver("step", [run_id]) == "dispatched"
    assert sorted(a[2] for k, a in sent if k == "evaluate") == [0, 1]
    first = sent[0]
    sent.clear()
    assert deliver(*first) == "evaluated"
    # The worker dies here: the other evaluation's message is lost.
    sent.clear()
    mid = svc.client.get(f"/v1/admin/rl-runs/{run_id}", headers=svc.admin).json()
    assert mid["status"] == "running" and mid["samples"] == 4 and mid["rewarded_samples"] == 2
    # A stored evaluation is never recomputed.
    assert deliver(*first) == "skipped"
    # Resume: step sends only the missing evaluation.
    assert svc.client.post(f"/v1/admin/rl-runs/{run_id}/resume", headers=svc.admin).status_code == 202
    assert deliver("step", [run_id]) == "dispatched"
    assert sent == [("evaluate", [run_id, 0, 1 - first[1][2]])]
    pending = sent.pop()
    assert deliver(*pending) == "evaluated"
    assert sent == [("step", [run_id])]  # the last evaluation closes the iteration
    assert deliver(*sent.pop()) == "succeeded"
    seconds = time.perf_counter() - t0

    out = svc.client.get(f"/v1/admin/rl-runs/{run_id}", headers=svc.admin).json()
    assert out["status"] == "succeeded" and out["progress"] == 1.0
    assert out["rewarded_samples"] == 4 and len(out["checkpoints"]) == 1
    samples = svc.client.get(f"/v1/admin/rl-runs/{run_id}/samples", headers=svc.admin).json()["data"]
    assert len(samples) == 4
    # The curve is that of the stored samples: the mean reward, and the mean of each passage's best.
    by_passage: dict[int, list[float]] = {}
    for s in samples:
        by_passage.setdefault(s["passage"], []).append(s["reward"])
    assert sorted(len(v) for v in by_passage.values()) == [2, 2]
    assert out["curve"]["mean_reward"] == [pytest.approx(sum(s["reward"] for s in samples) / 4)]
    assert out["curve"]["best_of_n_reward"] == [pytest.approx(sum(map(max, by_passage.values())) / 2)]
    assert all(s["prompt"] and s["text"] and s["policy_id"] is None and len(s["seeds"]) == 1
               and s["rewards"][0]["reward"] == s["reward"] for s in samples)
    policies = svc.client.get("/v1/admin/policies", headers=svc.admin, params={"rl_run_id": run_id}).json()["data"]
    assert [p["id"] for p in policies] == out["checkpoints"] and policies[0]["iteration"] == 1
    assert svc.client.post(f"/v1/admin/policies/{policies[0]['id']}/promote", headers=svc.admin).status_code == 200
    # The stream ends with the finished state.
    events = svc.client.get(f"/v1/admin/rl-runs/{run_id}/events", headers=svc.admin).text
    assert '"status": "succeeded"' in events and "event: end" in events
    assert svc.client.post(f"/v1/admin/rl-runs/{run_id}/resume", headers=svc.admin).status_code == 409
    print(f"tiny RL run: {seconds:.1f}s")
