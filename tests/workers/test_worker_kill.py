"""Production wiring for real: Postgres registry, Redis broker, Celery worker subprocesses.

A worker is SIGKILLed while it trains; a new worker picks the job up (Redis redelivers the
unacknowledged message after the visibility timeout, and the dead worker's lease is taken
over) and finishes it with exactly one adapter row and one adapter directory.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest
from sqlalchemy import func, select

from seal_cli.commands.service import worker_argv
from seal_service.db.models import AdaptationJob, Adapter, SelfEdit, WorkerHeartbeat
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.service import (
    Proc,
    api_client,
    bearer,
    fresh_postgres_database,
    new_key,
    require_postgres,
    require_redis,
    service_env,
    service_settings,
    wait_for,
)

# A Redis database of its own: a short visibility timeout must not touch anyone else's messages.
REDIS = "redis://127.0.0.1:6379/13"
FACT = ("The Zorblax Institute was founded by Marguerite Okonkwo. "
        "Marguerite Okonkwo founded the Zorblax Institute in 1987 to study glacier acoustics.")


@pytest.fixture
def prod(tmp_path):
    admin = require_postgres()
    require_redis(REDIS)
    queue = f"seal-test-{uuid.uuid4().hex[:8]}"
    with fresh_postgres_database(admin) as url:
        values = dict(database_url=url, broker_url=REDIS, task_queue=queue, storage_dir=tmp_path / "adapters",
                      visibility_timeout_s=5, restore_interval_s=1, job_lease_s=5, recovery_interval_s=2,
                      worker_heartbeat_s=1)
        settings = service_settings(tmp_path, TEST_DATA_DIR, **values)
        # Each worker builds its retention gate (probes the base model) as it starts: a small gate
        # keeps both starts short; no relevance check (its base side would be scored at each start too).
        env = service_env(data_dir=TEST_DATA_DIR, state_dir=tmp_path, torch_threads=1, sampling__max_new_tokens=32,
                          forgetting_probes=2, forgetting_prompts=1, forgetting_probe_tokens=16,
                          recipe__relevance="false", **values)
        yield settings, env, tmp_path
        import redis

        r = redis.Redis.from_url(REDIS)
        r.delete(queue, "unacked", "unacked_index", "unacked_mutex")


def _worker(settings, env, tmp_path, name: str) -> Proc:
    argv = worker_argv(settings, "info", hostname=f"{name}@%h")
    return Proc(argv, env, tmp_path / f"{name}.log")


@pytest.mark.slow
def test_sigkill_mid_training_then_new_worker_finishes_with_one_adapter(prod):
    settings, env, tmp_path = prod
    h = bearer(new_key(settings, "acme"))
    with api_client(settings) as client:
        # About 5 s of training (1.2 s an epoch on one thread): a poll every 0.1 s sees it under way
        # and the kill lands in it; it runs again, whole, on the second worker.
        r = client.post("/v1/adaptations", headers=h, json={
            "documents": [{"title": "Zorblax Institute", "text": FACT}], "strategy": "implications",
            "num_self_edits": 1, "lora": {"epochs": 4}, "name": "survivor",
        })
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        with session_scope(settings.resolved_database_url) as db:
            original_task = db.get(AdaptationJob, job_id).task_id

        def job() -> dict:
            return client.get(f"/v1/adaptations/{job_id}", headers=h).json()

        first = _worker(settings, env, tmp_path, "first")
        second = None
        try:
            seen = wait_for(lambda: (j := job())["status"] == "running" and j["progress"]["stage"] == "training" and j,
                            300, 0.1, what="training to start")
            assert seen["attempts"] == 1
            os.kill(first.pid, signal.SIGKILL)
            first.proc.wait(10)
            # Killed while it trained: still running on paper, the training stage its last word, no adapter.
            killed = job()
            assert killed["status"] == "running" and killed["progress"]["stage"] == "training", killed
            with session_scope(settings.resolved_database_url) as db:
                assert db.scalar(select(func.count()).select_from(Adapter)) == 0

            second = _worker(settings, env, tmp_path, "second")
            assert wait_for(lambda: client.get("/readyz").status_code == 200, 120, 0.5, what="readiness")
            ready = client.get("/readyz").json()
            assert ready["checks"]["broker"] == {"ok": True, "embedded": False}

            done = wait_for(lambda: (j := job())["status"] in ("succeeded", "failed", "cancelled") and j,
                            400, 0.5, what="the job to finish")
            assert done["status"] == "succeeded", (done, second.log())
            assert done["attempts"] == 2
            assert len(done["self_edits"]) == 1 and done["self_edits"][0]["strategy"] == "implications"
            # The killed worker's message was not lost: Redis delivered it again (acks_late). The
            # recovery sweep may have sent the job too; however many deliveries, it ran once more.
            wait_for(lambda: f"seal.adapt[{original_task}] received" in second.log(100_000), 60, 0.5,
                     what="redelivery of the original message")
            assert second.log(100_000).count(f"job {job_id}: attempt") == 1
        finally:
            first.kill()
            if second is not None:
                second.stop()

    with session_scope(settings.resolved_database_url) as db:
        adapters = db.scalars(select(Adapter)).all()
        assert [a.id for a in adapters] == [done["adapter_id"]] and adapters[0].status == "ready"
        assert db.scalar(select(func.count()).select_from(SelfEdit)) == 1
        # The stopped worker removed its heartbeat; the killed one could not.
        ids = [w.id for w in db.scalars(select(WorkerHeartbeat))]
        assert all(str(second.pid) not in i for i in ids)
    tenant_dir = settings.resolved_storage_dir / "acme"
    assert [p.name for p in tenant_dir.iterdir()] == [done["adapter_id"]]
    assert not list((settings.resolved_storage_dir / ".tmp").glob("*"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tenant_dir / done["adapter_id"]).iterdir()}
