"""End to end on the embedded default: `seal serve` (API + its own worker, SQLite, no other service).

A document is POSTed, the job is followed over server-sent events to `succeeded`, and the
adapter, queried through the official `openai` client, answers the new fact.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import zipfile

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
def test_embedded_serve_adapt_and_query(tmp_path):
    from openai import NotFoundError, OpenAI

    env = service_env(
        data_dir=TEST_DATA_DIR, state_dir=tmp_path, torch_threads=1, worker_heartbeat_s=1,
        retention_probes=2, answer_max_new_tokens=16,
    )
    key_a, key_b = _key(env, "alpha"), _key(env, "beta")
    port = free_port()
    serve = Proc(seal_cli("serve", "--port", str(port), "--log-level", "info"), env, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        # Ready means: database, embedded broker and the local worker all answer.
        ready = wait_http(base + "/readyz", 180, serve).json()
        assert ready["checks"]["broker"]["embedded"] is True and ready["checks"]["worker"]["workers"] == 1
        worker_pid = int(re.search(r"worker started \(pid (\d+)\)", serve.log(tail=10**7)).group(1))
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
        assert final["status"] == "succeeded", (final, serve.log())
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
    finally:
        rc = serve.stop(timeout=60)
    # Stopping `seal serve` stops its worker too.
    assert rc in (0, 143), serve.log()

    def worker_gone() -> bool:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(worker_gone, 30, what="the local worker to exit")
    assert "worker stopped" in serve.log()


@pytest.mark.slow
def test_embedded_worker_killed_mid_job_is_restarted_and_finishes(tmp_path):
    """`seal serve` restarts its worker; the job whose message the SQLite queue lost is sent again
    (its worker is gone) and finishes, with one adapter."""
    env = service_env(data_dir=TEST_DATA_DIR, state_dir=tmp_path, torch_threads=1, worker_heartbeat_s=1)
    key = _key(env, "alpha")
    port = free_port()
    serve = Proc(seal_cli("serve", "--port", str(port)), env, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/readyz", 180, serve)
        first_pid = int(re.search(r"worker started \(pid (\d+)\)", serve.log(tail=10**7)).group(1))
        h = bearer(key)
        job_id = httpx.post(base + "/v1/adaptations", headers=h, timeout=30, json={
            "documents": [{"text": FACT}], "strategy": "passage", "lora": {"epochs": 60},
        }).json()["id"]

        def job() -> dict:
            return httpx.get(f"{base}/v1/adaptations/{job_id}", headers=h, timeout=30).json()

        wait_for(lambda: job()["progress"]["stage"] == "training", 300, 0.2, what="training")
        os.kill(first_pid, 9)
        done = wait_for(lambda: (j := job())["status"] in ("succeeded", "failed") and j, 400, 0.5,
                        what="the job to finish after the restart")
        assert done["status"] == "succeeded", serve.log(20_000)
        assert done["attempts"] == 2
        assert "restarting" in serve.log(100_000)
        adapters = [m for m in httpx.get(base + "/v1/adapters", headers=h).json()["data"]]
        assert [a["id"] for a in adapters] == [done["adapter_id"]]
        assert [p.name for p in (tmp_path / "adapters" / "alpha").iterdir()] == [done["adapter_id"]]

        # If `seal serve` itself is killed, its worker notices and exits too.
        second_pid = int(re.findall(r"worker started \(pid (\d+)\)", serve.log(100_000))[-1])
        serve.kill()

        def gone() -> bool:
            try:
                os.kill(second_pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(gone, 60, 0.5, what="the orphaned worker to exit")
    finally:
        serve.stop(timeout=60)
