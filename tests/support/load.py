"""A load burst against a real server: mixed chat and text completions, streamed and not, over
the base model and random adapters, each answer checked (bench/load.py, tests/reliability/)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.service import Proc, bearer, free_port, seal_cli, service_env, wait_http


def write_random_adapters(data_dir: str, directory: Path, n: int) -> list[Path]:
    """n adapters of the default LoRA shape with random weights, without loading the model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from seal_engine.core.lora import LoraAdapter, lora_config
    from seal_engine.core.model import default_model_dir
    from seal_engine.config import DEFAULT_MODEL_ID, EngineSettings

    settings = EngineSettings(data_dir=data_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(default_model_dir(settings)))
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    shapes = {name: (m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets}
    r = settings.lora.rank
    config = lora_config(settings.lora.model_copy(update={"target_modules": list(targets)}), DEFAULT_MODEL_ID)
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        state = {}
        for name, (d_in, d_out) in shapes.items():
            state[f"base_model.model.{name}.lora_A.weight"] = torch.randn(r, d_in, generator=g) * 0.05
            state[f"base_model.model.{name}.lora_B.weight"] = torch.randn(d_out, r, generator=g) * 0.02
        paths.append(LoraAdapter(config, state).save(directory / f"adapter{i}"))
    return paths


QUESTIONS = ["Tell me about Victoria.", "What is a glacier?", "Why is the sky blue?", "Describe the river."]


def _well_formed_chat(body: dict[str, Any], n: int = 1) -> bool:
    choices = body.get("choices")
    return (body.get("object") == "chat.completion" and isinstance(choices, list) and len(choices) == n
            and all(isinstance(c.get("message", {}).get("content"), str) for c in choices)
            and isinstance(body.get("usage", {}).get("completion_tokens"), int))


def _well_formed_text(body: dict[str, Any]) -> bool:
    choices = body.get("choices")
    return (body.get("object") == "text_completion" and isinstance(choices, list) and len(choices) == 1
            and isinstance(choices[0].get("text"), str) and isinstance(body.get("usage", {}).get("completion_tokens"), int))


def _stream_ok(lines: list[str], kind: str) -> tuple[bool, int]:
    """A stream is well formed when every data line is JSON of the right object until ``[DONE]``."""
    data = [ln[len("data: "):] for ln in lines if ln.startswith("data: ")]
    if not data or data[-1] != "[DONE]":
        return False, 0
    pieces = 0
    for chunk in data[:-1]:
        try:
            obj = json.loads(chunk)
        except ValueError:
            return False, 0
        want = "chat.completion.chunk" if kind == "chat" else "text_completion"
        if obj.get("object") != want:
            return False, 0
        for c in obj.get("choices", []):
            pieces += bool(c.get("delta", {}).get("content") if kind == "chat" else c.get("text"))
    return True, pieces


async def one(client: httpx.AsyncClient, i: int, models: list[str], tokens: int) -> dict[str, Any]:
    kind = "chat" if i % 2 == 0 else "text"
    stream = (i // 2) % 2 == 1
    model = models[(i // 4) % len(models)]
    question = QUESTIONS[i % len(QUESTIONS)]
    body: dict[str, Any] = {"model": model, "max_tokens": tokens, "temperature": 0, "stream": stream}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": question}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = question
        path = "/v1/completions"
    t0 = time.perf_counter()
    out: dict[str, Any] = {"kind": kind, "stream": stream, "model": model}
    try:
        if stream:
            async with client.stream("POST", path, json=body) as r:
                lines = [ln async for ln in r.aiter_lines()]
                out["status"], out["retry_after"] = r.status_code, r.headers.get("Retry-After")
                ok, pieces = _stream_ok(lines, kind) if r.status_code == 200 else (True, 0)
                out["well_formed"], out["tokens"] = ok, pieces  # a piece is about a token
        else:
            r = await client.post(path, json=body)
            out["status"], out["retry_after"] = r.status_code, r.headers.get("Retry-After")
            if r.status_code == 200:
                j = r.json()
                out["well_formed"] = _well_formed_chat(j) if kind == "chat" else _well_formed_text(j)
                out["tokens"] = j.get("usage", {}).get("completion_tokens", 0)
            else:
                out["well_formed"] = "error" in r.json()
                out["tokens"] = 0
    except httpx.HTTPError as e:
        out.update(status=f"{type(e).__name__}", well_formed=False, tokens=0)
    out["seconds"] = time.perf_counter() - t0
    return out


async def burst(base: str, key: str, models: list[str], n: int, tokens: int) -> tuple[float, list[dict[str, Any]]]:
    limits = httpx.Limits(max_connections=n + 8, max_keepalive_connections=n + 8)
    async with httpx.AsyncClient(base_url=base, headers=bearer(key), timeout=900, limits=limits) as client:
        await one(client, 0, models, tokens)  # warm-up: the model and an adapter are loaded
        t = time.perf_counter()
        rows = await asyncio.gather(*(one(client, i, models, tokens) for i in range(n)))
        return time.perf_counter() - t, list(rows)


def summary(seconds: float, rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == 200]
    lat = sorted(r["seconds"] for r in ok) or [0.0]
    return {
        "requests": len(rows), "statuses": dict(Counter(str(r["status"]) for r in rows)),
        "server_errors": sum(1 for r in rows if not isinstance(r["status"], int) or r["status"] >= 500
                             and not (r["status"] == 503 and r.get("retry_after"))),
        "malformed": sum(1 for r in rows if not r["well_formed"]),
        "unavailable_without_retry_after": sum(1 for r in rows if r["status"] in (429, 503) and not r.get("retry_after")),
        "seconds": seconds, "latency_p50_s": statistics.median(lat),
        "latency_p99_s": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))],
        "generated_tokens": sum(r["tokens"] for r in ok), "tokens_per_s": sum(r["tokens"] for r in ok) / seconds,
    }


def load_adapters(base: str, admin_key: str, paths: list[Path], prefix: str) -> list[str]:
    """Load adapter directories into a running server as runtime LoRAs ``{prefix}-{i}``; their names."""
    names = []
    for i, path in enumerate(paths):
        r = httpx.post(f"{base}/v1/load_lora_adapter", headers=bearer(admin_key), timeout=300,
                       json={"lora_name": f"{prefix}-{i}", "lora_path": str(path)})
        r.raise_for_status()
        names.append(f"{prefix}-{i}")
    return names


@contextmanager
def served(data_dir: str, adapters: int, env: dict[str, str] | None = None) -> Iterator[tuple[str, str, list[str]]]:
    """``seal serve --no-worker`` on a fresh state dir with ``adapters`` random adapters loaded
    (``POST /v1/load_lora_adapter``): yields (base URL, an admin key, [base model, adapter names...])."""
    with ExitStack() as stack:
        state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seal-load-")))
        environ = service_env(data_dir=data_dir, state_dir=state)
        environ.update(env or {})
        key = subprocess.run(seal_cli("keys", "create", "--tenant", "load", "--admin"), env=environ,
                             capture_output=True, text=True, check=True).stdout.strip()
        paths = write_random_adapters(data_dir, state / "adapters" / "load", adapters)
        port = free_port()
        serve = Proc(seal_cli("serve", "--port", str(port), "--no-worker"), environ, state / "serve.log")
        stack.callback(serve.stop, 60)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", 300, serve)
        names = load_adapters(base, key, paths, "load")
        base_model = httpx.get(f"{base}/v1/models", headers=bearer(key)).json()["data"][0]["id"]
        yield base, key, [base_model, *names]
