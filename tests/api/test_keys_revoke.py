"""Keys can be listed and revoked (admin route and `seal keys revoke`); a revoked key is refused
at its next request; keys are stored only as their SHA-256."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from seal_service.db.models import ApiKey
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.service import api_client, bearer, new_key, service_settings


@pytest.fixture
def svc(tmp_path):
    settings = service_settings(tmp_path, TEST_DATA_DIR)
    admin_key = new_key(settings, "ops", admin=True)
    with api_client(settings) as client:
        yield SimpleNamespace(client=client, settings=settings, admin=bearer(admin_key), admin_key=admin_key)


def _create(svc, tenant: str, admin: bool = False) -> dict:
    r = svc.client.post("/v1/admin/keys", headers=svc.admin, json={"tenant": tenant, "admin": admin, "name": "ci"})
    assert r.status_code == 201, r.text
    return r.json()


def _key_id(svc, key: str) -> str:
    with session_scope(svc.settings.resolved_database_url) as db:
        return db.scalar(select(ApiKey.id).where(ApiKey.key_hash == hashlib.sha256(key.encode()).hexdigest()))


def test_a_revoked_key_is_refused_at_once(svc):
    k = _create(svc, "acme")
    h = bearer(k["key"])
    assert svc.client.get("/v1/models", headers=h).status_code == 200

    r = svc.client.delete(f"/v1/admin/keys/{k['id']}", headers=svc.admin)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == k["id"] and out["tenant"] == "acme" and out["revoked_at"] is not None
    assert "key" not in out and k["key"].startswith(out["prefix"])

    r = svc.client.get("/v1/models", headers=h)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert svc.client.post("/v1/adaptations", headers=h, json={}).status_code == 401

    # Idempotent: the first revocation time is kept.
    again = svc.client.delete(f"/v1/admin/keys/{k['id']}", headers=svc.admin)
    assert again.status_code == 200 and again.json()["revoked_at"] == out["revoked_at"]
    # Listed only when asked for; no longer counted for its tenant.
    ids = [x["id"] for x in svc.client.get("/v1/admin/keys", headers=svc.admin).json()["data"]]
    assert k["id"] not in ids and _key_id(svc, svc.admin_key) in ids
    listed = svc.client.get("/v1/admin/keys", headers=svc.admin,
                            params={"tenant": "acme", "include_revoked": "true"}).json()["data"]
    assert [(x["id"], x["revoked_at"]) for x in listed] == [(k["id"], out["revoked_at"])]
    tenants = {t["id"]: t["keys"] for t in svc.client.get("/v1/admin/tenants", headers=svc.admin).json()}
    assert tenants["acme"] == 0


def test_revoking_only_that_key(svc):
    first, second = _create(svc, "acme"), _create(svc, "acme")
    assert svc.client.delete(f"/v1/admin/keys/{first['id']}", headers=svc.admin).status_code == 200
    assert svc.client.get("/v1/models", headers=bearer(first["key"])).status_code == 401
    assert svc.client.get("/v1/models", headers=bearer(second["key"])).status_code == 200


def test_unknown_key_is_404(svc):
    r = svc.client.delete("/v1/admin/keys/key_doesnotexist", headers=svc.admin)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "key_not_found" and r.json()["error"]["param"] == "key_id"


def test_only_admins_list_or_revoke_and_not_their_own_key(svc):
    victim = _create(svc, "acme")
    tenant_key = _create(svc, "acme")
    h = bearer(tenant_key["key"])
    assert svc.client.delete(f"/v1/admin/keys/{victim['id']}", headers=h).status_code == 403
    assert svc.client.get("/v1/admin/keys", headers=h).status_code == 403
    assert svc.client.delete(f"/v1/admin/keys/{victim['id']}").status_code == 401
    assert svc.client.get("/v1/models", headers=bearer(victim["key"])).status_code == 200

    # Its own key: 409, and the key still works.
    own = _key_id(svc, svc.admin_key)
    r = svc.client.delete(f"/v1/admin/keys/{own}", headers=svc.admin)
    assert r.status_code == 409 and r.json()["error"]["code"] == "cannot_revoke_own_key"
    assert svc.client.get("/v1/admin/keys", headers=svc.admin).status_code == 200

    # Admin keys are service-wide: an admin key of another tenant revokes this admin key.
    other = _create(svc, "other-ops", admin=True)
    assert svc.client.delete(f"/v1/admin/keys/{own}", headers=bearer(other["key"])).status_code == 200
    assert svc.client.get("/v1/admin/keys", headers=svc.admin).status_code == 401


def test_keys_are_stored_hashed(svc):
    k = _create(svc, "acme")
    with session_scope(svc.settings.resolved_database_url) as db:
        row = db.get(ApiKey, k["id"])
        values = [str(getattr(row, c.key)) for c in ApiKey.__table__.columns]
    assert row.key_hash == hashlib.sha256(k["key"].encode()).hexdigest()
    assert not any(k["key"] in v for v in values)
    # A key differing in one character is not a key.
    wrong = k["key"][:-1] + ("A" if k["key"][-1] != "A" else "B")
    assert svc.client.get("/v1/models", headers=bearer(wrong)).status_code == 401


def test_cli_revoke_and_list(svc, monkeypatch):
    from typer.testing import CliRunner

    from seal_cli.main import app

    k = _create(svc, "acme")
    env = {"SEAL_DATA_DIR": str(TEST_DATA_DIR), "SEAL_STATE_DIR": str(svc.settings.resolved_state_dir)}
    for name in ("SEAL_DATABASE_URL", "SEAL_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    listed = runner.invoke(app, ["keys", "list", "--tenant", "acme"], env=env)
    assert listed.exit_code == 0, listed.output
    assert k["id"] in listed.stdout and k["key"] not in listed.stdout

    r = runner.invoke(app, ["keys", "revoke", k["id"]], env=env)
    assert r.exit_code == 0, r.output
    assert f"revoked key {k['id']}" in r.output
    assert svc.client.get("/v1/models", headers=bearer(k["key"])).status_code == 401
    assert k["id"] not in runner.invoke(app, ["keys", "list"], env=env).stdout
    assert k["id"] in runner.invoke(app, ["keys", "list", "--revoked"], env=env).stdout

    missing = runner.invoke(app, ["keys", "revoke", "key_nope"], env=env)
    assert missing.exit_code == 2 and "no key 'key_nope'" in missing.output
