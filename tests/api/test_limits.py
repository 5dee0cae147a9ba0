"""Overload and fair use (api/limits.py): no database connection held while generating, a bounded
admission queue (503 + Retry-After, never a hang), per-tenant requests/tokens/jobs limits (429).

Generation is a stand-in backend that takes a known time: what is under test is how the API
admits and accounts for requests, not what the model writes.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from fastapi.responses import JSONResponse, StreamingResponse

from api.backends.base import GenerationBackend
from tests.conftest import TEST_DATA_DIR
from tests.support.fake_engine import DOCS
from tests.support.service import bearer, new_key, service_settings

CHAT = {"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class SlowBackend(GenerationBackend):
    """Answers after ``seconds`` (streams: one chunk every ``seconds`` / 4)."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = 0
        self.most = 0

    async def chat(self, body, target, max_tokens):  # noqa: ANN001, ANN201
        if body.stream:
            async def chunks():  # noqa: ANN202
                self.running += 1
                try:
                    for i in range(4):
                        await asyncio.sleep(self.seconds / 4)
                        yield f"data: {i}\n\n"
                finally:
                    self.running -= 1
            return StreamingResponse(chunks(), media_type="text/event-stream")
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
        return JSONResponse({"object": "chat.completion", "choices": []})

    async def completions(self, body, target, max_tokens, prompts):  # noqa: ANN001, ANN201
        return JSONResponse({"object": "text_completion", "choices": []})


def _app(tmp_path, backend: GenerationBackend, **overrides):  # noqa: ANN202
    from api.main import create_app

    settings = service_settings(tmp_path, TEST_DATA_DIR, **overrides)
    keys = {t: new_key(settings, t) for t in ("acme", "globex")}  # migrates the registry
    app = create_app(settings)
    app.state.backend = backend
    CHAT["model"] = settings.model_id
    return app, keys


async def _many(app, key: str, n: int, body: dict | None = None) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://seal", timeout=30) as client:
        return await asyncio.gather(*[client.post("/v1/chat/completions", json=body or CHAT, headers=bearer(key))
                                      for _ in range(n)])


def test_generation_holds_no_database_connection(tmp_path) -> None:
    # One connection for the whole process, given up after 0.5 s: requests that each generate for
    # 1 s can only all succeed if none keeps the connection while it generates.
    app, keys = _app(tmp_path, SlowBackend(1.0), db_pool_size=1, db_max_overflow=0, db_pool_timeout_s=0.5)
    replies = asyncio.run(_many(app, keys["acme"], 8))
    assert [r.status_code for r in replies] == [200] * 8, [r.text for r in replies]
    assert app.state.backend.most == 8  # they did generate at the same time


def test_a_full_admission_queue_answers_503_with_retry_after_at_once(tmp_path) -> None:
    backend = SlowBackend(1.5)
    app, keys = _app(tmp_path, backend, max_active_generations=2, generation_queue_size=1,
                     generation_queue_wait_s=0.5)
    t = time.monotonic()
    replies = asyncio.run(_many(app, keys["acme"], 6))
    elapsed = time.monotonic() - t
    codes = sorted(r.status_code for r in replies)
    # Two generate; one waits 0.5 s in the queue and gives up; three find the queue full.
    assert codes == [200, 200, 503, 503, 503, 503], [r.text for r in replies]
    for r in replies:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "overloaded"
    assert backend.most == 2 and elapsed < 3.0  # nobody waited past the queue's bound
    # The slots were given back: the next request is served.
    assert [r.status_code for r in asyncio.run(_many(app, keys["acme"], 1))] == [200]


def test_a_waiting_request_is_served_when_a_slot_frees(tmp_path) -> None:
    app, keys = _app(tmp_path, SlowBackend(0.4), max_active_generations=1, generation_queue_size=4,
                     generation_queue_wait_s=10)
    replies = asyncio.run(_many(app, keys["acme"], 3))
    assert [r.status_code for r in replies] == [200] * 3 and app.state.backend.most == 1


def test_a_stream_holds_its_slot_until_it_ends(tmp_path) -> None:
    app, keys = _app(tmp_path, SlowBackend(1.0), max_active_generations=1, generation_queue_size=0,
                     generation_queue_wait_s=5)

    async def run() -> tuple[int, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://seal", timeout=30) as client:
            async def stream() -> int:
                async with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True},
                                         headers=bearer(keys["acme"])) as r:
                    async for _ in r.aiter_bytes():
                        pass
                    return r.status_code

            task = asyncio.create_task(stream())
            await asyncio.sleep(0.5)  # the stream is under way (its first chunk comes at 0.25 s)
            during = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(keys["acme"]))
            streamed = await task
            after = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(keys["acme"]))
            return streamed, during.status_code, after.status_code

    assert asyncio.run(run()) == (200, 503, 200)


def test_tenant_request_rate_limit(tmp_path) -> None:
    app, keys = _app(tmp_path, SlowBackend(0.0), tenant_requests_per_min=3)

    async def run() -> tuple[list[int], list[int], httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://seal") as client:
            acme = [(await client.get("/v1/models", headers=bearer(keys["acme"]))) for _ in range(4)]
            globex = [(await client.get("/v1/models", headers=bearer(keys["globex"]))).status_code for _ in range(3)]
            return [r.status_code for r in acme], globex, acme[-1]

    acme, globex, limited = asyncio.run(run())
    assert acme == [200, 200, 200, 429] and globex == [200, 200, 200]  # one tenant's use is not another's
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    # 3 a minute: the next one is back in about 20 s.
    assert 1 <= int(limited.headers["Retry-After"]) <= 21


def test_tenant_token_rate_limit_counts_what_a_request_may_generate(tmp_path) -> None:
    app, keys = _app(tmp_path, SlowBackend(0.0), tenant_tokens_per_min=100)
    body = {**CHAT, "max_tokens": 30, "n": 2}  # 60 tokens at most
    first = asyncio.run(_many(app, keys["acme"], 1, body))[0]
    second = asyncio.run(_many(app, keys["acme"], 1, body))[0]
    other = asyncio.run(_many(app, keys["globex"], 1, body))[0]
    assert (first.status_code, second.status_code, other.status_code) == (200, 429, 200)
    assert second.json()["error"]["code"] == "tokens_rate_limit_exceeded" and "60" in second.json()["error"]["message"]
    assert int(second.headers["Retry-After"]) >= 1


def test_the_token_budget_charges_the_max_tokens_the_route_settled_on(tmp_path) -> None:
    # No max_tokens given: a chat is charged the server's default (60), a text completion OpenAI's 16
    # per prompt and choice.
    app, keys = _app(tmp_path, SlowBackend(0.0), tenant_tokens_per_min=100, default_max_tokens=60)
    chat = {k: v for k, v in CHAT.items() if k != "max_tokens"}
    assert [r.status_code for r in asyncio.run(_many(app, keys["acme"], 1, chat))] == [200]
    assert [r.status_code for r in asyncio.run(_many(app, keys["acme"], 1, chat))] == [429]  # 120 > 100

    async def text(body: dict) -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://seal") as client:
            return (await client.post("/v1/completions", json=body, headers=bearer(keys["globex"]))).status_code

    body = {"model": CHAT["model"], "prompt": ["a", "b"], "n": 3}  # 2 x 3 x 16 = 96 tokens
    assert asyncio.run(text(body)) == 200 and asyncio.run(text({**body, "prompt": "c", "n": 1})) == 429


def test_tenant_active_jobs_limit(tmp_path) -> None:
    from tests.support.service import api_client

    settings = service_settings(tmp_path, TEST_DATA_DIR, tenant_max_active_jobs=2)
    with api_client(settings) as client:
        acme, globex = bearer(new_key(settings, "acme")), bearer(new_key(settings, "globex"))
        codes = [client.post("/v1/adaptations", headers=acme, json={"documents": DOCS}).status_code
                 for _ in range(3)]
        assert codes == [202, 202, 429]
        task = {"train": [{"input": w, "output": w.upper()} for w in ("apple", "river", "candle")]}
        refused = client.post("/v1/tasks", headers=acme, json=task)  # task jobs count too
        assert refused.status_code == 429, refused.text
        assert client.post("/v1/adaptations", headers=globex, json={"documents": DOCS}).status_code == 202
        assert client.post("/v1/tasks", headers=globex, json=task).status_code == 202
        # A job that ends frees its place.
        job_id = client.get("/v1/adaptations", headers=acme).json()["data"][0]["id"]
        assert client.post(f"/v1/adaptations/{job_id}/cancel", headers=acme).status_code == 200
        last = client.post("/v1/adaptations", headers=acme, json={"documents": DOCS})
        assert last.status_code == 202, last.text


def test_zero_turns_a_limit_off(tmp_path) -> None:
    app, keys = _app(tmp_path, SlowBackend(0.0), tenant_requests_per_min=0, tenant_tokens_per_min=0)
    replies = asyncio.run(_many(app, keys["acme"], 20, {**CHAT, "max_tokens": 512}))
    assert {r.status_code for r in replies} == {200}
