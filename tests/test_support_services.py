"""The service guard: a missing Postgres/Redis skips a test locally but fails it under CI=true."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import service
from tests.support.service import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def nothing_listening(monkeypatch) -> str:
    """Point the guards at a loopback port with nothing behind it."""
    port = free_port()
    monkeypatch.setattr(service, "PG_ADMIN_URLS", (f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres",))
    return f"redis://127.0.0.1:{port}/0"


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_missing_services_fail_under_ci(nothing_listening, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="PostgreSQL .* not reachable .*CI=true"):
        service.require_postgres()
    with pytest.raises(pytest.fail.Exception, match="Redis .* not reachable"):
        service.require_redis(nothing_listening)


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_missing_services_skip_outside_ci(nothing_listening, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="PostgreSQL"):
        service.require_postgres()
    with pytest.raises(pytest.skip.Exception, match="Redis"):
        service.require_redis(nothing_listening)


def test_running_services_are_returned(monkeypatch):
    """With the services up (as on this machine and in CI) the guards hand back working URLs."""
    monkeypatch.setenv("CI", "true")  # up means no skip and no failure, CI or not
    admin = service.require_postgres()
    assert admin in service.PG_ADMIN_URLS and service.postgres_admin_url() == admin
    assert service.require_redis() == service.REDIS_URL


def test_test_script_does_not_swallow_a_services_failure_under_ci(tmp_path):
    """scripts/test.sh: with CI=true a failing scripts/services.sh stops the run (exit non-zero, no pytest)."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "test.sh").write_text((ROOT / "scripts" / "test.sh").read_text())
    (scripts / "setup.sh").write_text("exit 0\n")
    (scripts / "services.sh").write_text("exit 1\n")
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").write_text("#!/bin/sh\necho PYTEST-RAN\n")
    (venv_bin / "python").chmod(0o755)

    def run(ci: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "CI": ci}
        return subprocess.run(["bash", str(scripts / "test.sh")], env=env, capture_output=True, text=True, timeout=60)

    ci = run("TRUE")
    assert ci.returncode != 0 and "PYTEST-RAN" not in ci.stdout, (ci.stdout, ci.stderr)
    assert "Postgres/Redis" in ci.stderr
    local = run("")
    assert local.returncode == 0 and "PYTEST-RAN" in local.stdout, (local.stdout, local.stderr)
    assert "warning" in local.stderr


def test_every_test_has_a_timeout(pytestconfig):
    """pyproject.toml sets a global pytest-timeout, so one hang cannot stall CI."""
    assert pytestconfig.pluginmanager.hasplugin("timeout")
    assert 0 < float(pytestconfig.getini("timeout")) <= 600
