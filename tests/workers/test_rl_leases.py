"""Leases on RL work: a unit in progress is not redone, a dead worker's unit is recovered.

Every test runs on SQLite and on the real Postgres (where claims truly race: row locks, READ COMMITTED).
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import update

from seal_service.db.base import utcnow
from seal_service.db.models import RLRun, RLSample, RLWorkLease
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.service import api_client, bearer, database_for, new_key, race, service_settings
from workers.rl import jobs as rl_jobs
from workers.rl import leases

DOCS = [{"title": f"Doc {i}", "text": f"The Zorblax {i} was founded in 18{i}0.",
         "questions": [{"question": f"When was Zorblax {i} founded?", "answer": f"18{i}0"}]} for i in range(2)]
TINY = {"passages": 2, "samples": 2, "iterations": 1, "documents": DOCS}


@pytest.fixture(params=["sqlite", "postgres"])
def svc(request, tmp_path):
    with database_for(request.param) as url:
        settings = service_settings(tmp_path, TEST_DATA_DIR, job_lease_s=1.0, requeue_after_s=5.0, database_url=url)
        with api_client(settings) as client:
            yield SimpleNamespace(client=client, settings=settings,
                                  admin=bearer(new_key(settings, "ops", admin=True)))


def _run_with_samples(svc) -> str:
    """An RL run whose iteration 0 is already sampled (so step needs no model)."""
    r = svc.client.post("/v1/admin/rl-runs", headers=svc.admin, json=TINY)
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    with session_scope(svc.settings.resolved_database_url) as s:
        for p in range(2):
            for n in range(2):
                s.add(RLSample(rl_run_id=run_id, iteration=0, passage=p, sample=n, title=f"Doc {p}",
                               prompt="write implications", text=f"edit {p}.{n}"))
    return run_id


def no_model(_settings):  # the units under test must never reach the model
    raise AssertionError("the model was loaded")


def test_claim_is_exclusive_reentrant_and_expires(svc):
    run_id = _run_with_samples(svc)
    s = svc.settings
    assert leases.claim(s, run_id, 0, 1, "remote-host:1:a")
    assert not leases.claim(s, run_id, 0, 1, "remote-host:2:b")  # held and renewed by nobody yet, but not expired
    assert leases.claim(s, run_id, 0, 1, "remote-host:1:a")  # the holder itself (a redelivery to it)
    assert leases.held_units(s, run_id, 0) == {1}
    time.sleep(1.2)  # job_lease_s = 1: expired without renewal
    assert leases.held_units(s, run_id, 0) == set()
    assert leases.claim(s, run_id, 0, 1, "remote-host:2:b")
    leases.release(s, run_id, 0, 1, "remote-host:2:b")
    assert leases.claim(s, run_id, 0, 1, "remote-host:3:c")


def test_held_lease_is_renewed_until_released(svc):
    run_id = _run_with_samples(svc)
    s = svc.settings
    assert leases.claim(s, run_id, 0, 0, "remote-host:1:a")
    with leases.Held(s, run_id, 0, 0, "remote-host:1:a"):
        time.sleep(1.5)  # longer than the lease: only renewal keeps it
        assert not leases.claim(s, run_id, 0, 0, "remote-host:2:b")
    assert leases.held_units(s, run_id, 0) == set()
    assert leases.claim(s, run_id, 0, 0, "remote-host:2:b")


def test_a_duplicate_delivery_does_not_redo_work_in_progress(svc):
    run_id = _run_with_samples(svc)
    s = svc.settings
    sent: list = []
    assert leases.claim(s, run_id, 0, 0, "otherhost:99:x")  # a live worker is evaluating passage 0
    with leases.Held(s, run_id, 0, 0, "otherhost:99:x"):
        got = rl_jobs.evaluate(s, run_id, 0, 0, lambda k, a: sent.append((k, a)), worker="me:1:y", bundle_fn=no_model)
        assert got == "leased"
        # step resends only the evaluation nobody holds
        assert rl_jobs.step(s, run_id, lambda k, a: sent.append((k, a)), worker="me:1:y", bundle_fn=no_model) == "dispatched"
        assert sent == [("evaluate", [run_id, 0, 1])]
    with session_scope(s.resolved_database_url) as db:
        assert db.get(RLRun, run_id).status == "running"


def test_recovery_resends_step_once_for_a_dead_worker(svc):
    run_id = _run_with_samples(svc)
    s = svc.settings
    sent: list = []
    dispatch = lambda k, a: sent.append((k, a))  # noqa: E731
    assert rl_jobs.step(s, run_id, dispatch, worker="me:1:y", bundle_fn=no_model) == "dispatched"
    sent.clear()
    # A worker takes passage 0, renews its lease while working ...
    assert leases.claim(s, run_id, 0, 0, "otherhost:99:x")
    assert leases.recover(s, dispatch) == []  # work in progress: nothing to do
    # ... and dies: its lease runs out.
    with session_scope(s.resolved_database_url) as db:
        db.execute(update(RLWorkLease).where(RLWorkLease.rl_run_id == run_id, RLWorkLease.unit == 0)
                   .values(lease_until=utcnow() - timedelta(seconds=1)))
    assert leases.recover(s, dispatch) == [run_id]
    assert sent == [("step", [run_id])]
    assert leases.recover(s, dispatch) == []  # one resend, not one per sweep
    sent.clear()
    # The resent step sends both evaluations again (passage 1's message is unclaimed too).
    assert rl_jobs.step(s, run_id, dispatch, worker="me:1:y", bundle_fn=no_model) == "dispatched"
    assert sorted(a[2] for _k, a in sent) == [0, 1]


def test_recovery_resends_a_message_never_picked_up(svc):
    run_id = _run_with_samples(svc)
    s = svc.settings
    sent: list = []
    dispatch = lambda k, a: sent.append((k, a))  # noqa: E731
    assert rl_jobs.step(s, run_id, dispatch, worker="me:1:y", bundle_fn=no_model) == "dispatched"
    assert leases.recover(s, dispatch) == []  # sent just now: give the queue time
    with session_scope(s.resolved_database_url) as db:
        db.execute(update(RLWorkLease).where(RLWorkLease.rl_run_id == run_id)
                   .values(dispatched_at=utcnow() - timedelta(seconds=10)))
    sent.clear()
    assert leases.recover(s, dispatch) == [run_id]
    assert sent == [("step", [run_id])]


def test_workers_racing_for_a_fresh_unit_one_wins(svc):
    """Several workers claim the same never-claimed unit at once (insert race): exactly one gets it."""
    run_id = _run_with_samples(svc)
    s = svc.settings
    for unit in range(6):
        got = race(4, lambda i, unit=unit: leases.claim(s, run_id, 0, unit, f"remote-host:{i}:w{i}"))
        assert sum(got) == 1, (unit, got)
        winner = f"remote-host:{got.index(True)}:w{got.index(True)}"
        with session_scope(s.resolved_database_url) as db:
            assert db.get(RLWorkLease, (run_id, 0, unit)).worker == winner
        assert leases.held_units(s, run_id, 0) >= {unit}


def test_workers_racing_for_an_expired_unit_one_wins(svc):
    """A dead worker's unit (lease run out) is taken over by exactly one of the claimers racing for it."""
    run_id = _run_with_samples(svc)
    s = svc.settings
    for round_ in range(4):
        assert leases.claim(s, run_id, 0, 0, f"gone-host:{round_}:dead")
        with session_scope(s.resolved_database_url) as db:
            db.execute(update(RLWorkLease).where(RLWorkLease.rl_run_id == run_id, RLWorkLease.unit == 0)
                       .values(lease_until=utcnow() - timedelta(seconds=1)))
        got = race(4, lambda i, r=round_: leases.claim(s, run_id, 0, 0, f"remote-host:{r}{i}:w"))
        assert sum(got) == 1, (round_, got)
        with session_scope(s.resolved_database_url) as db:
            row = db.get(RLWorkLease, (run_id, 0, 0))
            assert row.worker == f"remote-host:{round_}{got.index(True)}:w" and row.attempts == 2 * round_ + 2
        leases.release(s, run_id, 0, 0, row.worker)
        # released: the next round's first claim takes it at once
