"""RL runs on workers (workers/rl/jobs.py): a cancel keeps the finished work and runs no further unit; a
worker killed mid-iteration loses only the unit it was running.

The engine's RL steps are stand-ins that log every call (tests/support/fake_rl.py), so executions are
counted, also across processes; everything else is real: the admin API, the registry (SQLite and the
real Postgres), leases, the recovery sweep and, for the kill, a worker process SIGKILLed mid-evaluation.
"""

from __future__ import annotations

import json
import socket
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from seal_service.db.models import PolicyCheckpoint, RLEvaluation, RLWorkLease
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.fake_rl import BLOCK_ENV, FakeRL, no_model, reward_of
from tests.support.service import (
    Proc,
    api_client,
    bearer,
    database_for,
    new_key,
    service_env,
    service_settings,
    wait_for,
)
from workers.rl import jobs as rl_jobs
from workers.rl import leases

ROOT = Path(__file__).resolve().parents[2]
DOCS = [{"title": f"Doc {i}", "text": f"The Zorblax {i} was founded in 18{i}0.",
         "questions": [{"question": f"When was Zorblax {i} founded?", "answer": f"18{i}0"}]} for i in range(3)]


@pytest.fixture(params=["sqlite", "postgres"])
def svc(request, tmp_path, monkeypatch):
    with database_for(request.param) as url:
        settings = service_settings(tmp_path, TEST_DATA_DIR, job_lease_s=1.0, database_url=url)
        with api_client(settings) as client:
            yield SimpleNamespace(client=client, settings=settings, url=url, tmp=tmp_path, sent=[],
                                  admin=bearer(new_key(settings, "ops", admin=True)),
                                  fake=FakeRL(tmp_path / "calls.log").install(monkeypatch))


def _start(svc, iterations: int) -> str:
    r = svc.client.post("/v1/admin/rl-runs", headers=svc.admin,
                        json={"documents": DOCS, "passages": 3, "samples": 2, "iterations": iterations})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _deliver(svc, kind: str, args: list, worker: str = "hostb:2:b") -> str:
    fn = rl_jobs.step if kind == "step" else rl_jobs.evaluate
    return fn(svc.settings, *args, lambda k, a: svc.sent.append((k, a)), worker=worker, bundle_fn=no_model)


def _take_sent(svc) -> list:
    out, svc.sent[:] = list(svc.sent), []
    return out


def _run(svc, run_id: str) -> dict:
    return svc.client.get(f"/v1/admin/rl-runs/{run_id}", headers=svc.admin).json()


def _rewards(svc, run_id: str, iteration: int) -> dict[tuple[int, int], float | None]:
    rows = svc.client.get(f"/v1/admin/rl-runs/{run_id}/samples", headers=svc.admin,
                          params={"iteration": iteration}).json()["data"]
    return {(s["passage"], s["sample"]): s["reward"] for s in rows}


def test_cancel_keeps_finished_work_and_runs_no_further_unit(svc):
    run_id = _start(svc, iterations=2)
    # Iteration 0 runs to its checkpoint; iteration 1 is sampled and sends its three evaluations.
    assert _deliver(svc, "step", [run_id]) == "dispatched"
    for _k, args in _take_sent(svc):
        assert _deliver(svc, "evaluate", args) == "evaluated"
    assert _take_sent(svc) == [("step", [run_id])]
    assert _deliver(svc, "step", [run_id]) == "advanced"
    assert _deliver(svc, *_take_sent(svc)[0]) == "dispatched"
    pending = _take_sent(svc)
    assert sorted(a[2] for _k, a in pending) == [0, 1, 2] and all(a[1] == 1 for _k, a in pending)
    [cid] = _run(svc, run_id)["checkpoints"]

    # The run is cancelled while a worker evaluates passage 0 of iteration 1.
    def cancel() -> None:
        r = svc.client.post(f"/v1/admin/rl-runs/{run_id}/cancel", headers=svc.admin)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"

    svc.fake.during[(1, 0)] = cancel
    assert _deliver(svc, *pending[0]) == "evaluated"  # the unit in flight finishes
    # Every later delivery (the other evaluations, a step, a recovery sweep) does nothing.
    for kind, args in [*pending[1:], ("step", [run_id])]:
        assert _deliver(svc, kind, args) == "skipped"
    assert leases.recover(svc.settings, lambda k, a: svc.sent.append((k, a))) == [] and svc.sent == []
    assert Counter(svc.fake.calls("evaluated")) == Counter([(0, 0), (0, 1), (0, 2), (1, 0)])
    assert svc.fake.calls("train") == [(0, -1)] and svc.fake.calls("sample") == [(0, -1), (1, -1)]

    # What finished stays readable: iteration 0's metrics and checkpoint, every evaluated reward.
    out = _run(svc, run_id)
    assert out["status"] == "cancelled" and out["stage"] == "cancelled" and out["finished_at"]
    assert out["checkpoints"] == [cid] and [m["iteration"] for m in out["iterations"]] == [0]
    assert out["curve"]["mean_reward"] == [pytest.approx(sum(reward_of(0, p, n) for p in range(3) for n in range(2)) / 6)]
    assert out["samples"] == 12 and out["rewarded_samples"] == 8
    assert _rewards(svc, run_id, 0) == {(p, n): pytest.approx(reward_of(0, p, n)) for p in range(3) for n in range(2)}
    assert _rewards(svc, run_id, 1) == {(p, n): (pytest.approx(reward_of(1, p, n)) if p == 0 else None)
                                        for p in range(3) for n in range(2)}
    [policy] = svc.client.get("/v1/admin/policies", headers=svc.admin, params={"rl_run_id": run_id}).json()["data"]
    assert policy["id"] == cid and policy["iteration"] == 1
    with session_scope(svc.settings.resolved_database_url) as db:
        files = {p.name for p in Path(db.get(PolicyCheckpoint, cid).storage_path).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert svc.client.post(f"/v1/admin/policies/{cid}/promote", headers=svc.admin).status_code == 200

    # Resumed, it goes on from the stored evaluation: only the two missing ones run.
    assert svc.client.post(f"/v1/admin/rl-runs/{run_id}/resume", headers=svc.admin).status_code == 202
    assert _deliver(svc, "step", [run_id]) == "dispatched"
    resent = _take_sent(svc)
    assert sorted(a[2] for _k, a in resent) == [1, 2]
    for kind, args in resent:
        assert _deliver(svc, kind, args) == "evaluated"
    assert _deliver(svc, *_take_sent(svc)[0]) == "succeeded"
    assert Counter(svc.fake.calls("evaluated")) == Counter([(i, p) for i in range(2) for p in range(3)])
    out = _run(svc, run_id)
    assert out["status"] == "succeeded" and len(out["checkpoints"]) == 2 and out["rewarded_samples"] == 12


def test_a_worker_killed_mid_iteration_loses_only_its_unit(svc):
    run_id = _start(svc, iterations=1)
    assert _deliver(svc, "step", [run_id]) == "dispatched"
    messages = _take_sent(svc)
    assert sorted(a[2] for _k, a in messages) == [0, 1, 2]
    by_unit = {a[2]: (k, a) for k, a in messages}

    # Worker A (its own process) evaluates passage 0, then is SIGKILLed inside passage 1.
    env = service_env(data_dir=TEST_DATA_DIR, state_dir=svc.tmp, database_url=svc.url, job_lease_s=1.0)
    env[BLOCK_ENV] = "0:1"
    worker_a = Proc([sys.executable, "-m", "tests.support.fake_rl", str(svc.fake.log),
                     json.dumps([by_unit[0], by_unit[1]])], env, svc.tmp / "worker_a.log", cwd=ROOT)
    try:
        wait_for(lambda: (0, 1) in svc.fake.calls("evaluate") or not worker_a.alive(), 120, 0.2,
                 what="worker A to start passage 1")
        assert worker_a.alive(), worker_a.log()
        assert leases.held_units(svc.settings, run_id, 0) == {1}  # held (and renewed) by A
    finally:
        worker_a.kill()  # SIGKILL: no lease released, no renewal any more
        worker_a.stop()  # (closes its log)
    assert svc.fake.calls("evaluated") == [(0, 0)]
    assert _run(svc, run_id)["status"] == "running"

    # The recovery sweep of any worker sees A's dead lease and sends step once; step resends only what is
    # neither stored nor held: passage 0 is not evaluated again.
    assert leases.recover(svc.settings, lambda k, a: svc.sent.append((k, a))) == [run_id]
    assert _take_sent(svc) == [("step", [run_id])]
    assert _deliver(svc, "step", [run_id]) == "dispatched"
    resent = _take_sent(svc)
    assert sorted(a[2] for _k, a in resent) == [1, 2]
    for kind, args in resent:  # worker B finishes the iteration
        assert _deliver(svc, kind, args) == "evaluated"
    # The broker's copies of the original messages arrive too: all are skipped, stored work is not redone.
    for unit in (0, 1, 2):
        assert _deliver(svc, *by_unit[unit]) == "skipped"
    assert _take_sent(svc) == [("step", [run_id])]
    assert _deliver(svc, "step", [run_id]) == "succeeded"

    # Each unit ran to the end once; only passage 1 was started twice (A died in it).
    assert sorted(svc.fake.calls("evaluated")) == [(0, 0), (0, 1), (0, 2)]
    assert Counter(svc.fake.calls("evaluate")) == Counter({(0, 0): 1, (0, 1): 2, (0, 2): 1})
    assert svc.fake.calls("sample") == [(0, -1)] and svc.fake.calls("train") == [(0, -1)]
    with session_scope(svc.settings.resolved_database_url) as db:
        attempts = {r.unit: r.attempts for r in db.scalars(select(RLWorkLease).where(RLWorkLease.rl_run_id == run_id))}
        workers = {e.passage: e.worker for e in db.scalars(select(RLEvaluation).where(RLEvaluation.rl_run_id == run_id))}
    assert {u: attempts[u] for u in (0, 1, 2)} == {0: 1, 1: 2, 2: 1}
    # Passage 0's result is A's, kept as it stored it.
    assert workers[0].startswith(f"{socket.gethostname()}:{worker_a.pid}:") and workers[1] == workers[2] == "hostb:2:b"
    assert _rewards(svc, run_id, 0) == {(p, n): pytest.approx(reward_of(0, p, n)) for p in range(3) for n in range(2)}
    out = _run(svc, run_id)
    assert out["status"] == "succeeded" and out["rewarded_samples"] == 6 and len(out["checkpoints"]) == 1
    assert out["curve"]["mean_reward"] == [pytest.approx(sum(reward_of(0, p, n) for p in range(3) for n in range(2)) / 6)]
