"""A tiny RL run through `seal serve` (API + its own Celery worker): step and per-passage tasks over the queue."""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from tests.conftest import SHARED_DATA, TEST_DATA_DIR
from tests.support.service import Proc, bearer, free_port, seal_cli, service_env, wait_http

TRAIN = SHARED_DATA / "squad" / "train.json"


@pytest.mark.slow
def test_tiny_rl_run_on_a_real_worker(tmp_path):
    if not TRAIN.exists():
        pytest.skip(f"no {TRAIN}")
    # The worker builds the adaptation jobs' retention gate as it starts; RL does not use it: the smallest one
    # (0 would mean every probe).
    # Rewards are counted, not read: short answers.
    # nor the relevance check's base side (adaptation jobs only).
    env = service_env(data_dir=TEST_DATA_DIR, state_dir=tmp_path, worker_heartbeat_s=1, forgetting_probes=1,
                      forgetting_prompts=1, forgetting_probe_tokens=8, answer_max_new_tokens=16,
                      recipe__relevance="false")
    out = subprocess.run(seal_cli("keys", "create", "--tenant", "ops", "--admin"), env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    h = bearer(out.stdout.strip())
    port = free_port()
    serve = Proc(seal_cli("serve", "--port", str(port)), env, tmp_path / "serve.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/readyz", 180, serve)
        # The smallest run with every kind of task: a step, two per-passage evaluations, a policy.
        r = httpx.post(base + "/v1/admin/rl-runs", headers=h, timeout=60, json={
            "dataset": str(TRAIN), "passages": 2, "samples": 2, "repeats": 1, "iterations": 1, "max_questions": 1,
            "retention_probes": 2, "lora": {"epochs": 1}, "sampling": {"max_new_tokens": 32},
            "sft": {"epochs": 1, "learning_rate": 1e-3}})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        states = []
        with httpx.stream("GET", f"{base}/v1/admin/rl-runs/{run_id}/events", headers=h,
                          timeout=httpx.Timeout(1500, connect=10)) as s:
            for line in s.iter_lines():
                if line.startswith("data:") and line != "data: {}":
                    states.append(json.loads(line[5:]))
        final = states[-1]
        assert final["status"] == "succeeded", (final, serve.log())
        assert final["rewarded_samples"] == 4 and len(final["checkpoints"]) == 1
        assert any(st["stage"].startswith("evaluating") for st in states)
        policies = httpx.get(base + "/v1/admin/policies", headers=h, timeout=30).json()["data"]
        assert [p["id"] for p in policies] == final["checkpoints"]
    finally:
        serve.stop()
