"""The vLLM generation backend (SEAL_GENERATION_BACKEND=vllm), against a real server speaking vLLM's protocol.

The "vLLM server" is our own API (a real uvicorn subprocess serving the real tiny model),
which implements vLLM's runtime LoRA endpoints (POST /v1/load_lora_adapter and
/v1/unload_lora_adapter). A second API instance, configured with the vLLM backend and
sharing the adapter storage, forwards generation to it through the official `openai`
client. Greedy answers through the second instance must equal the first server's own.
"""

from __future__ import annotations

import asyncio
import math
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from seal_service.db.models import Adapter
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.service import Proc, api_client, bearer, free_port, new_key, service_env, service_settings, wait_http

BASE = "SmolLM2-135M-Instruct"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The capital of France is"


# --- small random adapters, written without loading the model ---------------------------------


@pytest.fixture(scope="module")
def linear_shapes() -> dict[str, tuple[int, int]]:
    """(in, out) of every q_proj / v_proj of the base model, from its config on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from seal_engine.config import EngineSettings
    from seal_engine.core.model import default_model_dir

    config = AutoConfig.from_pretrained(default_model_dir(EngineSettings(data_dir=TEST_DATA_DIR)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {name: (m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ("q_proj", "v_proj")}


def write_adapter(directory: Path, shapes: dict[str, tuple[int, int]], seed: int, rank: int = 8) -> Path:
    """A PEFT adapter with random A and B (B large enough to change greedy answers)."""
    import torch

    from seal_engine.config import LoraSettings
    from seal_engine.core.lora import LoraAdapter, lora_config

    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (d_in, d_out) in shapes.items():
        a = (torch.rand(rank, d_in, generator=g) * 2 - 1) / math.sqrt(d_in)
        state[f"base_model.model.{name}.lora_A.weight"] = a
        state[f"base_model.model.{name}.lora_B.weight"] = torch.randn(d_out, rank, generator=g) * 0.3
    cfg = lora_config(LoraSettings(rank=rank, alpha=2 * rank, target_modules=["q_proj", "v_proj"]), BASE)
    return LoraAdapter(config=cfg, state=state).save(directory)


# --- the "vLLM" server: our API in a subprocess ---------------------------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, linear_shapes):
    state = tmp_path_factory.mktemp("vllm-server")
    settings = service_settings(state, TEST_DATA_DIR)
    admin = new_key(settings, "ops", admin=True)  # also creates the database
    user = new_key(settings, "ops")
    other_admin = new_key(settings, "other", admin=True)
    storage = settings.resolved_storage_dir
    adapters = {f"adp_{c * 32}": write_adapter(storage / "acme" / f"adp_{c * 32}", linear_shapes, seed=i)
                for i, c in enumerate("abc")}
    port = free_port()
    env = service_env(data_dir=TEST_DATA_DIR, state_dir=state, torch_threads=1)
    proc = Proc([sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning"], env, state / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", 120, proc)
        yield SimpleNamespace(url=url, admin=admin, user=user, other_admin=other_admin, storage=storage,
                              adapters=adapters, proc=proc)
    finally:
        proc.stop()


def _serve_in_thread(app, port: int):  # noqa: ANN001, ANN202
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="seal-proxy", daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream):
    """A second API instance, in this process, with SEAL_GENERATION_BACKEND=vllm pointing at ``upstream``."""
    from api.main import create_app

    state = tmp_path_factory.mktemp("seal-proxy")
    settings = service_settings(
        state, TEST_DATA_DIR, storage_dir=upstream.storage, generation_backend="vllm",
        vllm_base_url=upstream.url, vllm_api_key=upstream.admin, vllm_model=BASE, adapter_cache_size=2,
        vllm_timeout_s=120, vllm_connect_timeout_s=2, vllm_max_retries=0)
    key = new_key(settings, "acme")
    with session_scope(settings.resolved_database_url) as db:
        for adapter_id, path in [*upstream.adapters.items(), ("adp_" + "d" * 32, upstream.storage / "acme" / "gone")]:
            db.add(Adapter(id=adapter_id, tenant_id="acme", base_model=BASE, storage_path=str(path), status="ready",
                           strategy="passage", size_bytes=1))
    app = create_app(settings)
    port = free_port()
    server, thread = _serve_in_thread(app, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", 30)
        yield SimpleNamespace(url=url, key=key, backend=app.state.backend, settings=settings)
    finally:
        server.should_exit = True
        thread.join(30)


def _client(url: str, key: str):  # noqa: ANN202
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)


def _upstream_loras(upstream) -> list[str]:  # noqa: ANN001
    r = httpx.get(upstream.url + "/v1/models", headers=bearer(upstream.admin), timeout=30)
    return sorted(m["id"] for m in r.json()["data"] if m.get("kind") == "lora" and m["id"].startswith("adp_"))


def _stream_text(stream, chat: bool) -> tuple[str, list]:  # noqa: ANN001
    chunks = list(stream)
    if chat:
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    return text, chunks


# --- the backend's protocol -------------------------------------------------------------------------


@pytest.mark.slow
def test_generation_through_vllm_backend_equals_the_server(upstream, proxy):
    via = _client(proxy.url, proxy.key)
    direct = _client(upstream.url, upstream.admin)
    a = next(iter(upstream.adapters))
    answers = {}
    for model in (BASE, a):
        r = via.chat.completions.create(model=model, messages=CHAT, temperature=0, max_tokens=8)
        d = direct.chat.completions.create(model=model, messages=CHAT, temperature=0, max_tokens=8)
        assert r.model == model and r.object == "chat.completion"
        assert r.choices[0].message.content == d.choices[0].message.content
        assert r.choices[0].finish_reason == d.choices[0].finish_reason
        assert r.usage.prompt_tokens == d.usage.prompt_tokens and r.usage.completion_tokens == d.usage.completion_tokens
        answers[model] = r.choices[0].message.content

        text, chunks = _stream_text(via.chat.completions.create(
            model=model, messages=CHAT, temperature=0, max_tokens=8, stream=True,
            stream_options={"include_usage": True}), chat=True)
        assert text == answers[model]
        assert all(c.model == model for c in chunks)
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens

        c = via.completions.create(model=model, prompt=[PROMPT, "One, two,"], temperature=0, max_tokens=6, n=2,
                                   stop=["\n"])
        dc = direct.completions.create(model=model, prompt=[PROMPT, "One, two,"], temperature=0, max_tokens=6, n=2,
                                       stop=["\n"])
        assert sorted((x.index, x.text) for x in c.choices) == sorted((x.index, x.text) for x in dc.choices)
        assert c.usage.total_tokens == dc.usage.total_tokens
        text, _ = _stream_text(via.completions.create(model=model, prompt=PROMPT, temperature=0, max_tokens=6,
                                                      stop=["\n"], stream=True), chat=False)
        assert text == next(x.text for x in c.choices if x.index == 0)
    assert answers[a] != answers[BASE], "the adapter must change the answer"
    # Loaded on the server once, at first use, under its id; the base model needs no loading.
    assert dict(proxy.backend.load_calls) == {a: 1}
    assert list(proxy.backend.loaded) == [a]
    assert _upstream_loras(upstream) == [a]


@pytest.mark.slow
def test_least_recently_used_adapter_is_unloaded(upstream, proxy):
    via = _client(proxy.url, proxy.key)
    a, b, c = upstream.adapters
    for model in (a, b, a, c):  # capacity 2: c evicts b, the least recently used
        via.completions.create(model=model, prompt=PROMPT, temperature=0, max_tokens=2)
    assert list(proxy.backend.loaded) == [a, c]
    assert dict(proxy.backend.unload_calls) == {b: 1}
    assert proxy.backend.load_calls[a] == 1 and proxy.backend.load_calls[b] == 1 and proxy.backend.load_calls[c] == 1
    assert _upstream_loras(upstream) == sorted([a, c])


@pytest.mark.slow
def test_adapter_unknown_to_the_server_is_reloaded_and_retried(upstream, proxy):
    via = _client(proxy.url, proxy.key)
    a = next(iter(upstream.adapters))
    if a not in proxy.backend.loaded:
        via.completions.create(model=a, prompt=PROMPT, temperature=0, max_tokens=2)
    before = proxy.backend.load_calls[a]
    expected = via.chat.completions.create(model=a, messages=CHAT, temperature=0, max_tokens=4).choices[0].message
    for stream in (False, True):
        # The server forgets it behind the backend's back (a restart, another replica's LRU).
        r = httpx.post(upstream.url + "/v1/unload_lora_adapter", headers=bearer(upstream.admin),
                       json={"lora_name": a})
        assert r.status_code == 200, r.text
        assert a not in _upstream_loras(upstream)
        out = via.chat.completions.create(model=a, messages=CHAT, temperature=0, max_tokens=4, stream=stream)
        text = _stream_text(out, chat=True)[0] if stream else out.choices[0].message.content
        assert text == expected.content
        assert a in _upstream_loras(upstream)
    assert proxy.backend.load_calls[a] == before + 2


@pytest.mark.slow
def test_errors_map_to_clean_statuses(upstream, proxy):
    import openai

    via = _client(proxy.url, proxy.key)
    with pytest.raises(openai.NotFoundError) as e:  # unknown to the registry: never sent to the server
        via.chat.completions.create(model="adp_" + "0" * 32, messages=CHAT)
    assert e.value.code == "model_not_found"
    # The server refuses the request (context too long): its 400 and message come through.
    with pytest.raises(openai.BadRequestError) as e:
        via.completions.create(model=BASE, prompt="hello " * 9000, max_tokens=16)
    assert e.value.code == "context_length_exceeded" and "context" in e.value.message
    # The server cannot load an adapter (its files are not on the shared storage): 502 with the reason.
    r = httpx.post(proxy.url + "/v1/completions", headers=bearer(proxy.key), timeout=60,
                   json={"model": "adp_" + "d" * 32, "prompt": PROMPT, "max_tokens": 2})
    assert r.status_code == 502, r.text
    message = r.json()["error"]["message"]
    assert "could not load adapter" in message and "no PEFT adapter" in message and "gone" in message


def test_unreachable_or_silent_server_gives_503_quickly(tmp_path):
    """Nothing listening, or a server that accepts and never answers: 503 with a message, never a hang."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # connections complete in the kernel; nothing ever answers
    try:
        for url, what in ((f"http://127.0.0.1:{free_port()}", "unreachable"),
                          (f"http://127.0.0.1:{silent.getsockname()[1]}", "did not answer")):
            settings = service_settings(tmp_path / what.replace(" ", "-"), TEST_DATA_DIR, generation_backend="vllm",
                                        vllm_base_url=url, vllm_timeout_s=1.5, vllm_connect_timeout_s=1.5,
                                        vllm_max_retries=0)
            key = new_key(settings, "acme")
            with api_client(settings) as client:
                for body, path in (({"model": BASE, "messages": CHAT}, "/v1/chat/completions"),
                                   ({"model": BASE, "messages": CHAT, "stream": True}, "/v1/chat/completions"),
                                   ({"model": BASE, "prompt": PROMPT}, "/v1/completions")):
                    t0 = time.monotonic()
                    r = client.post(path, headers=bearer(key), json=body)
                    assert time.monotonic() - t0 < 10
                    assert r.status_code == 503, r.text
                    err = r.json()["error"]
                    assert what in err["message"] and url in err["message"]
                    assert err["code"] in ("backend_unavailable", "backend_timeout")
                ready = client.get("/readyz").json()
                assert ready["checks"]["generation"]["ok"] is False
    finally:
        silent.close()


@pytest.mark.slow
def test_readyz_reports_the_vllm_server(proxy):
    checks = httpx.get(proxy.url + "/readyz", timeout=30).json()["checks"]
    assert checks["generation"]["ok"] is True and checks["generation"]["backend"] == "vllm"


# --- our own load/unload endpoints (what makes the API a stand-in for vLLM) -------------------------


@pytest.mark.slow
def test_load_and_unload_lora_adapter_endpoints(upstream, linear_shapes):
    url, storage = upstream.url, upstream.storage
    h = bearer(upstream.admin)
    a_path = next(iter(upstream.adapters.values()))
    rel = str(a_path.relative_to(storage))

    def load(body: dict, headers: dict = h) -> httpx.Response:
        return httpx.post(url + "/v1/load_lora_adapter", headers=headers, json=body, timeout=60)

    def ask(model: str, key: str = upstream.admin) -> httpx.Response:
        return httpx.post(url + "/v1/completions", headers=bearer(key), timeout=60,
                          json={"model": model, "prompt": PROMPT, "max_tokens": 3, "temperature": 0})

    # Keys: 401 without one, 403 for a non-admin key.
    assert load({"lora_name": "mine", "lora_path": rel}, headers={}).status_code == 401
    assert load({"lora_name": "mine", "lora_path": rel}, headers=bearer(upstream.user)).status_code == 403
    assert httpx.post(url + "/v1/unload_lora_adapter", headers=bearer(upstream.user),
                      json={"lora_name": "mine"}).status_code == 403
    # Paths outside the storage, missing, or not an adapter: 400 naming lora_path.
    (storage / "empty").mkdir(exist_ok=True)
    bad_dir = storage / "corrupt"
    bad_dir.mkdir(exist_ok=True)
    (bad_dir / "adapter_config.json").write_text((a_path / "adapter_config.json").read_text())
    (bad_dir / "adapter_model.safetensors").write_bytes(b"not safetensors")
    misfit = write_adapter(storage / "misfit", {k: (v[0] + 1, v[1]) for k, v in list(linear_shapes.items())[:2]}, 7)
    for path in ("/etc", "../../..", str(storage), "acme/nope", "empty", str(storage / ".." / "x")):
        r = load({"lora_name": "mine", "lora_path": path})
        assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path", (path, r.text)
    for path in ("corrupt", str(misfit)):  # unreadable weights; weights that do not fit the model
        r = load({"lora_name": "mine", "lora_path": path})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_lora_adapter", (path, r.text)
    for body in ({"lora_name": "mine"}, {"lora_path": rel}, {"lora_name": "", "lora_path": rel},
                 {"lora_name": "mine", "lora_path": "a\x00b"}, {"lora_name": "mine", "lora_path": rel, "x": 1}):
        assert load(body).status_code == 422, body
    assert load({"lora_name": BASE, "lora_path": rel}).status_code == 400
    assert ask("mine").status_code == 404

    # Load (relative to the storage, or absolute), as vLLM answers.
    r = load({"lora_name": "mine", "lora_path": rel})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'mine' added successfully.", r.text
    r = load({"lora_name": "mine", "lora_path": str(a_path)})
    assert r.status_code == 400 and "has already been loaded" in r.json()["error"]["message"]
    assert load({"lora_name": "mine", "lora_path": str(a_path), "load_inplace": True}).status_code == 200
    # Usable by the tenant's admin keys only; the same weights as the registry adapter it points to.
    answer = ask("mine")
    assert answer.status_code == 200, answer.text
    assert ask("mine", upstream.user).status_code == 404
    assert ask("mine", upstream.other_admin).status_code == 404
    models = httpx.get(url + "/v1/models", headers=h, timeout=30).json()["data"]
    assert any(m["id"] == "mine" and m["kind"] == "lora" for m in models)
    base = ask(BASE).json()["choices"][0]["text"]
    assert answer.json()["choices"][0]["text"] != base

    # Unload: then unknown (404), and unloading again is 404 too.
    r = httpx.post(url + "/v1/unload_lora_adapter", headers=h, json={"lora_name": "mine"})
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'mine' removed successfully."
    assert ask("mine").status_code == 404
    r = httpx.post(url + "/v1/unload_lora_adapter", headers=h, json={"lora_name": "mine"})
    assert r.status_code == 404 and "cannot be found" in r.json()["error"]["message"]
    assert upstream.proc.alive()


def test_settings_require_a_url_for_vllm():
    from pydantic import ValidationError

    from seal_service.settings import Settings

    with pytest.raises(ValidationError, match="SEAL_VLLM_BASE_URL"):
        Settings(generation_backend="vllm")
    s = Settings(generation_backend="vllm", vllm_base_url="http://vllm:8000/", vllm_model="", vllm_storage_dir="")
    assert s.resolved_vllm_base_url == "http://vllm:8000/v1" and s.resolved_vllm_model == s.model_id
    assert s.vllm_storage_dir is None and Settings().generation_backend == "local"


def test_adapter_paths_as_the_vllm_server_sees_them(tmp_path):
    from api.backends import VLLMBackend

    settings = service_settings(tmp_path, TEST_DATA_DIR, generation_backend="vllm", vllm_base_url="http://vllm:8000",
                                vllm_storage_dir="/data/adapters")
    b = VLLMBackend(settings)
    assert b.upstream_path(settings.resolved_storage_dir / "acme" / "adp_1") == "/data/adapters/acme/adp_1"
    assert b.upstream_path(Path("/elsewhere/adp_2")) == "/elsewhere/adp_2"
    assert VLLMBackend(settings.model_copy(update={"vllm_storage_dir": None})).upstream_path(
        settings.resolved_storage_dir / "x") == str(settings.resolved_storage_dir / "x")


def test_lru_never_unloads_an_adapter_in_use(tmp_path):
    """Capacity 2: the least recently used idle adapter goes; one with a request in flight stays."""
    from api.backends import ModelTarget, VLLMBackend

    settings = service_settings(tmp_path, TEST_DATA_DIR, generation_backend="vllm", vllm_base_url="http://x",
                                adapter_cache_size=2)
    b = VLLMBackend(settings)
    events: list[tuple[str, str]] = []

    async def load(name: str, _path: Path) -> None:
        events.append(("load", name))

    async def unload(name: str) -> None:
        events.append(("unload", name))

    b._load, b._unload = load, unload  # noqa: SLF001  (the protocol itself is tested against a server above)
    t = {n: ModelTarget(n, n, tmp_path / n) for n in "abcde"}

    async def use(n: str) -> None:
        await b._pin(t[n])  # noqa: SLF001
        b._unpin(t[n])  # noqa: SLF001

    async def main() -> None:
        await b._pin(t["a"])  # noqa: SLF001  (a request on a, in flight)
        await use("b")
        await use("c")  # over capacity: b (idle) goes although a is older
        assert list(b.loaded) == ["a", "c"]
        await b._pin(t["d"])  # noqa: SLF001
        await b._pin(t["e"])  # noqa: SLF001  (every loaded adapter busy but c: c goes, then nothing more)
        assert list(b.loaded) == ["a", "d", "e"]
        for n in "ade":
            b._unpin(t[n])  # noqa: SLF001
        await b._evict_over_capacity()  # noqa: SLF001  (after the requests end: back to capacity)
        assert list(b.loaded) == ["d", "e"]
        await use("d")
        assert list(b.loaded) == ["e", "d"]

    asyncio.run(main())
    assert events == [("load", "a"), ("load", "b"), ("load", "c"), ("unload", "b"), ("load", "d"), ("unload", "c"),
                      ("load", "e"), ("unload", "a")]
