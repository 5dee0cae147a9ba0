"""/readyz waits for a worker that has its model and the retention gate's base side, and for
the API's own model when it preloads one; /v1/admin/workers tells lost workers from live ones
and prunes them."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select

import api.main  # noqa: F401  (binds the real get_model before a test replaces it)
from seal_service.db.base import utcnow
from seal_service.db.models import WorkerHeartbeat
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.service import api_client, bearer, new_key, service_settings, wait_for
from workers import lifecycle


@pytest.fixture
def model_not_ready():
    was = lifecycle.MODEL_READY.is_set()
    lifecycle.MODEL_READY.clear()
    yield
    if was:
        lifecycle.MODEL_READY.set()


def _heartbeats(settings) -> list[str]:
    with session_scope(settings.resolved_database_url) as db:
        return list(db.scalars(select(WorkerHeartbeat.id)))


def _housekeeper(settings, name: str) -> lifecycle.Housekeeper:
    from seal_service.queue import make_celery

    return lifecycle.Housekeeper(settings, make_celery(settings), f"testhost:{1000 + len(name)}:{name}")


@pytest.mark.timeout(120)
def test_ready_only_once_the_worker_has_its_model_and_gate(tmp_path, monkeypatch, model_not_ready):
    import seal_engine.core.model as model_mod
    import seal_engine.knowledge.forgetting as forgetting_mod

    settings = service_settings(tmp_path, TEST_DATA_DIR, worker_heartbeat_s=0.2, worker_preload_model=True)
    release, steps = threading.Event(), []

    def slow_model(s):  # noqa: ANN001, ANN202
        steps.append("model")
        assert release.wait(60)
        return SimpleNamespace(model_id=s.model_id, device="cpu")

    def gate(bundle, s):  # noqa: ANN001, ANN202
        steps.append("gate")
        return SimpleNamespace(base_correct=[True, False], replies=["a"])

    monkeypatch.setattr(model_mod, "get_model", slow_model)
    monkeypatch.setattr(forgetting_mod, "gate_check", gate)

    with api_client(settings) as client:
        keeper = _housekeeper(settings, "abcdef")
        keeper.start()
        loader = threading.Thread(target=lifecycle.preload_model, args=(settings,))
        loader.start()
        try:
            wait_for(lambda: steps == ["model"], 30, 0.05, what="the model load to start")
            time.sleep(1.0)  # five heartbeat periods while the model loads
            assert _heartbeats(settings) == []
            r = client.get("/readyz")
            assert r.status_code == 503 and not r.json()["checks"]["worker"]["ok"]
            assert "once its model is loaded" in r.json()["checks"]["worker"]["error"]

            release.set()
            loader.join(30)
            assert steps == ["model", "gate"]
            wait_for(lambda: _heartbeats(settings) == ["testhost:1006:abcdef"], 10, 0.05, what="the heartbeat")
            r = client.get("/readyz")
            assert r.status_code == 200 and r.json()["checks"]["worker"] == {"ok": True, "workers": 1}
        finally:
            release.set()
            keeper.stop()
    assert _heartbeats(settings) == []  # a stopped worker removes its row


def test_a_worker_that_does_not_preload_reports_at_once(tmp_path, model_not_ready):
    settings = service_settings(tmp_path, TEST_DATA_DIR, worker_heartbeat_s=0.2, worker_preload_model=False)
    new_key(settings, "x")  # migrates
    keeper = _housekeeper(settings, "nopre")
    keeper.start()
    try:
        wait_for(lambda: _heartbeats(settings) == ["testhost:1005:nopre"], 10, 0.05, what="the heartbeat")
    finally:
        keeper.stop()


def _live_worker(settings) -> None:
    with session_scope(settings.resolved_database_url) as db:
        db.add(WorkerHeartbeat(id="h:1:live", hostname="h", pid=1, queue=settings.task_queue,
                               base_model=settings.model_id))


@pytest.mark.timeout(180)
def test_ready_waits_for_the_api_model_it_preloads(tmp_path):
    # A model that cannot load: never ready, with the reason pointing at the API process.
    broken = service_settings(tmp_path / "broken", TEST_DATA_DIR, api_preload_model=True,
                              model_path=tmp_path / "no-such-model")
    with api_client(broken) as client:
        _live_worker(broken)
        time.sleep(0.5)
        r = client.get("/readyz")
        assert r.status_code == 503, r.text
        gen = r.json()["checks"]["generation"]
        assert not gen["ok"] and gen["model_loaded"] is False and "API process" in gen["error"]
        assert r.json()["checks"]["worker"]["ok"]

    # The real model: ready once it has loaded in the background.
    settings = service_settings(tmp_path / "ok", TEST_DATA_DIR, api_preload_model=True)
    with api_client(settings) as client:
        _live_worker(settings)
        r = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r, 150, 0.25, what="readiness")
        assert r.json()["checks"]["generation"] == {"ok": True, "backend": "local", "model_loaded": True}


def test_lost_workers_are_marked_then_pruned(tmp_path):
    settings = service_settings(tmp_path, TEST_DATA_DIR, worker_heartbeat_s=1.0, worker_prune_after_s=600)
    admin = bearer(new_key(settings, "ops", admin=True))
    now = utcnow()
    with session_scope(settings.resolved_database_url) as db:
        for wid, age in (("h:1:alive", 0), ("h:2:killed", 10), ("h:3:ancient", 3600)):
            db.add(WorkerHeartbeat(id=wid, hostname="h", pid=1, queue=settings.task_queue, base_model="m",
                                   started_at=now - timedelta(seconds=age + 5),
                                   last_seen=now - timedelta(seconds=age)))
    with api_client(settings) as client:
        r = client.get("/v1/admin/workers", headers=admin)
        assert r.status_code == 200, r.text
        assert [(w["id"], w["status"]) for w in r.json()] == [("h:1:alive", "alive"), ("h:2:killed", "lost")]
        assert sorted(_heartbeats(settings)) == ["h:1:alive", "h:2:killed"]  # the ancient row is deleted
        assert client.get("/readyz").json()["checks"]["worker"] == {"ok": True, "workers": 1}

    # A live worker's heartbeat prunes too (even with no admin looking).
    with session_scope(settings.resolved_database_url) as db:
        db.get(WorkerHeartbeat, "h:2:killed").last_seen = now - timedelta(seconds=700)
    lifecycle.beat(settings, "h:1:alive", "m")
    assert _heartbeats(settings) == ["h:1:alive"]


def test_lost_after_and_prune_after_settings(tmp_path):
    from pydantic import ValidationError

    from seal_service.settings import Settings

    assert Settings(data_dir=tmp_path, worker_heartbeat_s=10).resolved_worker_lost_after_s == 30
    assert Settings(data_dir=tmp_path, worker_lost_after_s=7).resolved_worker_lost_after_s == 7
    with pytest.raises(ValidationError, match="PRUNE_AFTER"):
        Settings(data_dir=tmp_path, worker_lost_after_s=120, worker_prune_after_s=60)
