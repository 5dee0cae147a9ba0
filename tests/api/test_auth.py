"""API keys, tenants and isolation (on SQLite and on the real Postgres): 401, 403, 404."""

from __future__ import annotations

import hashlib
import subprocess

import pytest
from sqlalchemy import select

from seal_service.db.models import AdaptationJob, Adapter, ApiKey
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.service import (
    api_client,
    bearer,
    fresh_postgres_database,
    new_key,
    require_postgres,
    seal_cli,
    service_env,
    service_settings,
)

DOC = {"title": "Zorblax", "text": "The Zorblax Institute was founded by Marguerite Okonkwo."}


@pytest.fixture(params=["sqlite", "postgres"])
def env(request, tmp_path):
    if request.param == "sqlite":
        settings = service_settings(tmp_path, TEST_DATA_DIR)
        with api_client(settings) as client:
            yield client, settings
        return
    admin = require_postgres()
    with fresh_postgres_database(admin) as url:
        settings = service_settings(tmp_path, TEST_DATA_DIR, database_url=url)
        with api_client(settings) as client:
            yield client, settings


def _register_adapter(settings, job_id: str) -> str:
    """Pretend a worker finished the job (files + row), so adapter routes have something to show."""
    with session_scope(settings.resolved_database_url) as db:
        job = db.get(AdaptationJob, job_id)
        path = settings.resolved_storage_dir / job.tenant_id / job.adapter_id
        path.mkdir(parents=True)
        (path / "adapter_config.json").write_text('{"r": 16}')
        (path / "adapter_model.safetensors").write_bytes(b"x")
        job.status = "succeeded"
        db.add(Adapter(id=job.adapter_id, tenant_id=job.tenant_id, job_id=job.id, base_model=job.base_model,
                       storage_path=str(path), status="ready", strategy=job.strategy, size_bytes=2))
        return job.adapter_id


def test_downloads_never_leave_the_adapter_directory(env, tmp_path):
    client, settings = env
    a = bearer(new_key(settings, "alpha"))
    job = client.post("/v1/adaptations", headers=a, json={"documents": [DOC], "strategy": "passage"}).json()
    adapter_id = _register_adapter(settings, job["id"])
    secret = tmp_path / "outside.txt"
    secret.write_text("not the tenant's")
    directory = settings.resolved_storage_dir / "alpha" / adapter_id
    (directory / "link.json").symlink_to(secret)  # however it got there, it is not served
    assert "link.json" not in client.get(f"/v1/adapters/{adapter_id}", headers=a).json()["files"]
    for name in ("link.json", "..%2F..%2Fseal.db", "%2Fetc%2Fpasswd", "..%2Foutside.txt"):
        r = client.get(f"/v1/adapters/{adapter_id}/files/{name}", headers=a)
        assert r.status_code == 404 and b"not the tenant" not in r.content, (name, r.status_code)
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/adapters/{adapter_id}/download", headers=a).content)).namelist()
    assert sorted(names) == [f"{adapter_id}/adapter_config.json", f"{adapter_id}/adapter_model.safetensors"]


def test_logs_never_hold_keys_or_document_text(env, caplog):
    import logging

    from tests.support.fake_engine import FakeEngine

    client, settings = env
    key = new_key(settings, "alpha")
    secret_text = "The Quorvex vault code is 7-41-9 and only Ilsabet Marrow knows it."
    with caplog.at_level(logging.DEBUG):
        r = client.post("/v1/adaptations", headers=bearer(key), json={"documents": [{"text": secret_text}]})
        assert r.status_code == 202
        FakeEngine(settings).run(r.json()["id"])  # the worker's side logs too
        client.get("/v1/models", headers=bearer(key + "x"))  # a wrong key
        client.post("/v1/chat/completions", headers=bearer(key),
                    json={"model": "nope", "messages": [{"role": "user", "content": secret_text}]})
        client.post("/v1/adaptations", headers=bearer(key), json={"documents": [{"text": secret_text, "x": 1}]})
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records, "nothing was logged: the check would be empty"
    assert key not in logged and key[:20] not in logged
    assert "Quorvex" not in logged and "Ilsabet" not in logged


def test_every_tenant_route_answers_404_for_another_tenants_ids(env):
    """Route-complete: every non-admin route with an id in its path, asked by tenant B with tenant
    A's ids, answers 404 exactly as for an unknown id (a route added later is covered, or fails)."""
    from api.errors import api_routes

    client, settings = env
    a, b = bearer(new_key(settings, "alpha")), bearer(new_key(settings, "beta"))
    job = client.post("/v1/adaptations", headers=a, json={"documents": [DOC], "strategy": "passage"}).json()
    adapter_id = _register_adapter(settings, job["id"])
    task = client.post("/v1/tasks", headers=a, json={"train": [{"input": w, "output": w.upper()}
                                                               for w in ("apple", "river", "candle")]})
    assert task.status_code == 202, task.text
    assert client.put("/v1/aliases/kb-alpha", headers=a, json={"adapter_id": adapter_id}).status_code == 200
    ids = {"job_id": job["id"], "doc_id": job["documents"][0], "model_id": adapter_id, "adapter_id": adapter_id,
           "filename": "adapter_config.json", "name": "kb-alpha"}
    # B pointing A's alias at A's adapter: 404 (neither is B's), never a move.
    bodies = {"/v1/tasks/{job_id}/solve": {"inputs": ["lamp"]}, "/v1/aliases/{name}": {"adapter_id": adapter_id}}
    routes = [(m, r.path_format) for r in api_routes(client.app) for m in r.methods
              if r.dependant.path_params and not r.path_format.startswith("/v1/admin")]
    assert len(routes) >= 13, routes
    urls = [(m, p, p.format(**({**ids, "job_id": task.json()["id"]} if p.startswith("/v1/tasks") else ids)))
            for m, p in routes]
    for method, path, url in urls:
        r = client.request(method, url, headers=b, json=bodies.get(path))
        assert r.status_code == 404, (method, url, r.status_code, r.text)
    # The ids are real: the owner reads them (event streams left out: they follow the job until it ends).
    for method, path, url in urls:
        if method == "GET" and not path.endswith("/events"):
            assert client.get(url, headers=a).status_code == 200, (method, url)


def test_missing_and_bad_keys_answer_401(env):
    client, _ = env
    for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer nope"},
                    {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer " + "x" * 5000}):
        for method, path in (("get", "/v1/models"), ("post", "/v1/adaptations"), ("get", "/v1/adapters"),
                             ("post", "/v1/chat/completions"), ("get", "/v1/admin/tenants")):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (headers, path, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
            assert r.headers.get("www-authenticate") == "Bearer"
    # Health endpoints need no key.
    assert client.get("/healthz").status_code == 200


def test_keys_are_stored_hashed(env):
    _, settings = env
    key = new_key(settings, "acme")
    with session_scope(settings.resolved_database_url) as db:
        rows = db.scalars(select(ApiKey)).all()
    assert len(rows) == 1
    assert rows[0].key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in {rows[0].key_hash, rows[0].prefix, rows[0].id}


def test_revoked_key_is_rejected(env):
    client, settings = env
    key = new_key(settings, "acme")
    assert client.get("/v1/models", headers=bearer(key)).status_code == 200
    with session_scope(settings.resolved_database_url) as db:
        from seal_service.db.base import utcnow

        for row in db.scalars(select(ApiKey)):
            row.revoked_at = utcnow()
    assert client.get("/v1/models", headers=bearer(key)).status_code == 401


def test_admin_routes_need_an_admin_key(env):
    client, settings = env
    user, admin = new_key(settings, "acme"), new_key(settings, "ops", admin=True)
    for method, path, body in (("get", "/v1/admin/tenants", None), ("get", "/v1/admin/workers", None),
                               ("get", "/v1/admin/jobs", None), ("post", "/v1/admin/keys", {"tenant": "x"})):
        r = client.request(method, path, headers=bearer(user), json=body)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["code"] == "admin_required"
        assert client.request(method, path, headers=bearer(admin), json=body).status_code in (200, 201)
    r = client.post("/v1/admin/keys", headers=bearer(admin), json={"tenant": "beta"})
    new = r.json()["key"]
    assert client.get("/v1/models", headers=bearer(new)).status_code == 200
    assert {t["id"] for t in client.get("/v1/admin/tenants", headers=bearer(admin)).json()} >= {"acme", "ops", "beta"}
    r = client.post("/v1/admin/keys", headers=bearer(admin), json={"tenant": "bad tenant!"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "tenant"


def test_tenants_see_only_their_own(env):
    client, settings = env
    a, b = bearer(new_key(settings, "alpha")), bearer(new_key(settings, "beta"))
    r = client.post("/v1/adaptations", headers=a, json={"documents": [DOC], "strategy": "passage"})
    assert r.status_code == 202, r.text
    job = r.json()
    doc_id = job["documents"][0]
    adapter_id = _register_adapter(settings, job["id"])

    # The owner sees everything.
    assert client.get(f"/v1/adaptations/{job['id']}", headers=a).status_code == 200
    assert client.get(f"/v1/adaptations/{job['id']}", headers=a).json()["adapter_id"] == adapter_id
    assert client.get(f"/v1/adapters/{adapter_id}", headers=a).status_code == 200
    assert adapter_id in [m["id"] for m in client.get("/v1/models", headers=a).json()["data"]]
    assert client.get(f"/v1/documents/{doc_id}", headers=a).status_code == 200

    # Another tenant gets 404 for every one of those ids, exactly as for unknown ids.
    for path in (f"/v1/adaptations/{job['id']}", f"/v1/adaptations/{job['id']}/events", f"/v1/adapters/{adapter_id}",
                 f"/v1/adapters/{adapter_id}/download", f"/v1/adapters/{adapter_id}/files/adapter_config.json",
                 f"/v1/documents/{doc_id}", f"/v1/models/{adapter_id}"):
        r = client.get(path, headers=b)
        assert r.status_code == 404, (path, r.text)
    assert client.post(f"/v1/adaptations/{job['id']}/cancel", headers=b).status_code == 404
    assert client.delete(f"/v1/adapters/{adapter_id}", headers=b).status_code == 404
    r = client.post("/v1/chat/completions", headers=b,
                    json={"model": adapter_id, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert adapter_id not in [m["id"] for m in client.get("/v1/models", headers=b).json()["data"]]
    assert client.get("/v1/adaptations", headers=b).json()["data"] == []
    assert client.get("/v1/adapters", headers=b).json()["data"] == []
    # A stored document of another tenant cannot be used in a job.
    r = client.post("/v1/adaptations", headers=b, json={"documents": [doc_id]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "documents.0.id"

    # Deleting by the owner: gone for everyone.
    assert client.delete(f"/v1/adapters/{adapter_id}", headers=a).status_code == 200
    assert client.get(f"/v1/adapters/{adapter_id}", headers=a).status_code == 404
    assert not (settings.resolved_storage_dir / "alpha" / adapter_id).exists()


def test_keys_create_cli(tmp_path):
    env = service_env(data_dir=TEST_DATA_DIR, state_dir=tmp_path)
    out = subprocess.run(seal_cli("keys", "create", "--tenant", "acme", "--admin"), env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key = out.stdout.strip()
    assert key.startswith("seal-") and len(key.splitlines()) == 1
    assert "shown only once" in out.stderr
    settings = service_settings(tmp_path, TEST_DATA_DIR)
    with session_scope(settings.resolved_database_url) as db:
        row = db.scalar(select(ApiKey))
    assert row.tenant_id == "acme" and row.is_admin
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    bad = subprocess.run(seal_cli("keys", "create", "--tenant", "no spaces"), env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "tenant" in bad.stderr
