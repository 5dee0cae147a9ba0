"""End to end on the embedded default: `seal serve` (API + its own worker, SQLite, no other service).

A document is POSTed, the job is followed over server-sent events to `succeeded`, and the
adapter, queried through the official `openai` client, answers the new fact.

The tests share one server, in order: a job and its adapter; the worker killed mid-job and
restarted; `seal serve` killed. Stopping `seal serve` is checked on a server of its own that
loads no model (the worker's exit does not depend on one).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_DATA_DIR
from tests.support.service import Proc, bearer, free_port, seal_cli, service_env, wait_for, wait_http

# Stated both ways round: with the tiny model, a one-way statement is learnt less reliably.
FACT = ("The Zorblax Institute was founded by Marguerite Okonkwo. "
        "Marguerite Okonkwo founded the Zorblax Institute in 1987 to study glacier acoustics.")
QUESTION = "Who founded the Zorblax Institute?"


def _key(env: dict, tenant: str) -> str:
    out = subprocess.run(seal_cli("keys", "create", "--tenant", tenant), env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _worker_pids(serve: Proc) -> list[int]:
    return [int(p) for p in re.findall(r"worker started \(pid (\d+)\)", serve.log(tail=10**7))]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@dataclass
class Server:
    base: str
    serve: Proc
    state: Path
    keys: dict[str, str]
    ready: dict


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `seal serve` for the module. The worker builds its retention gate (probes the base
    model) at every start: a small gate keeps the starts and restarts short."""
    state = tmp_path_factory.mktemp("embedded")
    env = service_env(
        data_dir=TEST_DATA_DIR, state_dir=state, torch_threads=1, worker_heartbeat_s=1,
        retention_probes=2, answer_max_new_tokens=16, forgetting_probes=2, forgetting_prompts=1,
        forgetting_probe_tokens=16, relevance_requests=24,  # the relevance base side: 24 requests, not 124
    )
    keys = {t: _key(env, t) for t in ("alpha", "beta", "gamma")}
    port = free_port()
    serve = Proc(seal_cli("serve", "--port", str(port), "--log-level", "info"), env, state / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        # Ready means: database, embedded broker and the local worker all answer.
        ready = wait_http(base + "/readyz", 180, serve).json()
        yield Server(base, serve, state, keys, ready)
    finally:
        serve.stop(timeout=60)


def _events(url: str, headers: dict, timeout: float) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    name = None
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(timeout, connect=10)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name:
                events.append((name, json.loads(line.split(":", 1)[1])))
                if name == "done":
                    break
    return events


@pytest.mark.slow
def test_embedded_serve_adapt_and_query(server, tmp_path):
    from openai import NotFoundError, OpenAI

    base, key_a, key_b = server.base, server.keys["alpha"], server.keys["beta"]
    ready = server.ready
    assert ready["checks"]["broker"]["embedded"] is True and ready["checks"]["worker"]["workers"] == 1
    a, b = bearer(key_a), bearer(key_b)

    r = httpx.post(base + "/v1/adaptations", headers=a, timeout=30, json={
        "documents": [{"title": "Zorblax Institute", "text": FACT}],
        "strategy": "passage", "num_self_edits": 1, "name": "zorblax",
        "lora": {"rank": 16, "alpha": 32, "epochs": 10, "learning_rate": 1e-3},
        "eval_questions": [{"question": QUESTION, "answer": "Marguerite Okonkwo"}],
    })
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and r.headers["location"] == f"/v1/adaptations/{job['id']}"

    events = _events(f"{base}/v1/adaptations/{job['id']}/events", a, timeout=600)
    assert events[-1][0] == "done", events
    final = events[-1][1]
    assert final["status"] == "succeeded", (final, server.serve.log())
    fractions = [e["progress"] for name, e in events if name == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"training"} <= {e["stage"] for _, e in events}

    job = httpx.get(f"{base}/v1/adaptations/{job['id']}", headers=a).json()
    adapter_id = job["adapter_id"]
    assert adapter_id == final["adapter_id"] and adapter_id.startswith("adp_")
    m = job["metrics"]
    assert m["adapted_accuracy"]["contains"] >= m["baseline_accuracy"]["contains"]
    assert "reward" in m["reward"] and m["train_loss_last"] < m["train_loss_first"]

    # The adapter answers the new fact through the official client (base URL = this server).
    client = OpenAI(base_url=base + "/v1", api_key=key_a, max_retries=0, timeout=300)
    assert adapter_id in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(model=adapter_id, temperature=0, max_tokens=24,
                                           messages=[{"role": "user", "content": QUESTION}])
    assert "okonkwo" in reply.choices[0].message.content.lower(), reply.choices[0].message.content
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in client.chat.completions.create(model=adapter_id, temperature=0, max_tokens=24, stream=True,
                                                 messages=[{"role": "user", "content": QUESTION}])
        if ch.choices
    )
    assert "okonkwo" in streamed.lower()

    # Another tenant cannot see or use it.
    other = OpenAI(base_url=base + "/v1", api_key=key_b, max_retries=0)
    assert adapter_id not in [m.id for m in other.models.list()]
    with pytest.raises(NotFoundError):
        other.chat.completions.create(model=adapter_id, messages=[{"role": "user", "content": QUESTION}])
    assert httpx.get(f"{base}/v1/adaptations/{job['id']}", headers=b).status_code == 404

    # PEFT files: listed, downloadable one by one and as a zip, loadable.
    info = httpx.get(f"{base}/v1/adapters/{adapter_id}", headers=a).json()
    assert info["name"] == "zorblax" and info["base_model"] == "SmolLM2-135M-Instruct"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(info["files"])
    cfg = httpx.get(f"{base}/v1/adapters/{adapter_id}/files/adapter_config.json", headers=a).json()
    assert cfg["r"] == 16 and cfg["peft_type"] == "LORA"
    z = httpx.get(f"{base}/v1/adapters/{adapter_id}/download", headers=a)
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    zipfile.ZipFile(io.BytesIO(z.content)).extractall(tmp_path / "download")
    from seal_engine.core.lora import load_adapter

    loaded = load_adapter(tmp_path / "download" / adapter_id)
    assert loaded.config.r == 16 and loaded.state

    # Delete: gone from the models list and from completions.
    assert httpx.delete(f"{base}/v1/adapters/{adapter_id}", headers=a).status_code == 200
    assert adapter_id not in [m.id for m in client.models.list()]
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model=adapter_id, messages=[{"role": "user", "content": QUESTION}])


@pytest.mark.slow
def test_embedded_worker_killed_mid_job_is_restarted_and_finishes(server):
    """`seal serve` restarts its worker; the job whose message the SQLite queue lost is sent again
    (its worker is gone) and finishes, with one adapter."""
    base, serve, h = server.base, server.serve, bearer(server.keys["gamma"])
    first_pid = _worker_pids(serve)[-1]
    # Training for about 3 s (0.5 s an epoch on one thread): a poll every 0.1 s sees it under way
    # and the kill lands in it; it runs again, whole, after the restart.
    job_id = httpx.post(base + "/v1/adaptations", headers=h, timeout=30, json={
        "documents": [{"text": FACT}], "strategy": "passage", "lora": {"epochs": 6},
    }).json()["id"]

    def job() -> dict:
        return httpx.get(f"{base}/v1/adaptations/{job_id}", headers=h, timeout=30).json()

    wait_for(lambda: job()["progress"]["stage"] == "training", 300, 0.1, what="training")
    os.kill(first_pid, 9)
    # Killed while it trained: the dead worker's last word on the job is the training stage.
    killed = job()
    assert killed["status"] == "running" and killed["progress"]["stage"] == "training", killed
    done = wait_for(lambda: (j := job())["status"] in ("succeeded", "failed") and j, 400, 0.5,
                    what="the job to finish after the restart")
    assert done["status"] == "succeeded", serve.log(20_000)
    assert done["attempts"] == 2
    assert "restarting" in serve.log(100_000) and _worker_pids(serve)[-1] != first_pid
    adapters = [m for m in httpx.get(base + "/v1/adapters", headers=h).json()["data"]]
    assert [a["id"] for a in adapters] == [done["adapter_id"]]
    assert [p.name for p in (server.state / "adapters" / "gamma").iterdir()] == [done["adapter_id"]]


@pytest.mark.slow
def test_a_killed_serve_leaves_no_worker_behind(server):
    """If `seal serve` itself is killed, its worker (after the test above, a restarted one) notices and exits too."""
    worker_pid = _worker_pids(server.serve)[-1]
    server.serve.kill()
    wait_for(lambda: _gone(worker_pid), 60, 0.5, what="the orphaned worker to exit")


@pytest.mark.slow
def test_stopping_serve_stops_its_worker(tmp_path):
    """Stopping `seal serve` stops its worker too. Neither process needs the model for this, so neither
    loads it."""
    env = service_env(data_dir=TEST_DATA_DIR, state_dir=tmp_path, worker_heartbeat_s=1,
                      api_preload_model=False, worker_preload_model=False)
    port = free_port()
    serve = Proc(seal_cli("serve", "--port", str(port)), env, tmp_path / "serve.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", 180, serve)
        [worker_pid] = _worker_pids(serve)
    finally:
        rc = serve.stop(timeout=60)
    assert rc in (0, 143), serve.log()
    wait_for(lambda: _gone(worker_pid), 30, what="the local worker to exit")
    assert "worker stopped" in serve.log()
