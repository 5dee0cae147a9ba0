"""Liveness, readiness (each dependency reported) and the API's own documentation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.service import api_client, bearer, new_key, service_settings

DOCS = [{"title": "Zorblax", "text": "The Zorblax Institute was founded by Marguerite Okonkwo."}]


@pytest.fixture
def svc(tmp_path):
    settings = service_settings(tmp_path, TEST_DATA_DIR, job_lease_s=2.0)
    with api_client(settings) as client:
        yield SimpleNamespace(client=client, settings=settings, h=bearer(new_key(settings, "acme")))


def test_openapi_docs(svc):
    assert svc.client.get("/docs").status_code == 200
    paths = svc.client.get("/openapi.json").json()["paths"]
    for path in ("/v1/adaptations", "/v1/adaptations/{job_id}/events", "/v1/chat/completions", "/v1/completions",
                 "/v1/models", "/v1/adapters/{adapter_id}", "/healthz", "/readyz"):
        assert path in paths


def test_readyz_reports_each_dependency(svc, tmp_path):
    from seal_service.db.models import WorkerHeartbeat

    r = svc.client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"] and checks["broker"]["embedded"]
    assert not checks["worker"]["ok"] and "no worker" in checks["worker"]["error"]
    with session_scope(svc.settings.resolved_database_url) as db:
        db.add(WorkerHeartbeat(id="h:1:abcdef", hostname="h", pid=1, queue=svc.settings.task_queue,
                               base_model=svc.settings.model_id))
    r = svc.client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert svc.client.get("/healthz").json() == {"status": "ok"}

    # A broker that does not answer.
    from tests.support.service import free_port

    bad = service_settings(tmp_path / "bad", TEST_DATA_DIR, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    with api_client(bad) as client:
        r = client.get("/readyz")
        assert r.status_code == 503 and not r.json()["checks"]["broker"]["ok"]
        assert r.json()["checks"]["broker"]["error"]
        # Jobs cannot be queued: 503, and the job is not left queued forever.
        h = bearer(new_key(bad, "acme"))
        r = client.post("/v1/adaptations", headers=h, json={"documents": DOCS[:1], "strategy": "passage"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_unavailable"
        jobs = client.get("/v1/adaptations", headers=h).json()["data"]
        assert [j["status"] for j in jobs] == ["failed"] and "could not queue" in jobs[0]["error"]["message"]
        assert jobs[0]["error"]["code"] == "queue_unavailable"
