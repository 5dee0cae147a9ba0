"""OpenAI-compatible completions: the official `openai` client against a real uvicorn server
on 127.0.0.1 serving the real tiny model (slow)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from tests.conftest import TEST_DATA_DIR
from tests.support.service import Proc, bearer, free_port, new_key, service_env, service_settings, wait_for, wait_http

BASE = "SmolLM2-135M-Instruct"


# --- the real server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    state = tmp_path_factory.mktemp("openai")
    settings = service_settings(state, TEST_DATA_DIR)
    key = new_key(settings, "acme")  # also creates the database
    port = free_port()
    env = service_env(data_dir=TEST_DATA_DIR, state_dir=state, torch_threads=1, max_body_bytes=4096)
    proc = Proc([sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
                 "--port", str(port), "--log-level", "warning"], env, state / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", 120, proc)
        yield SimpleNamespace(url=url, key=key, port=port, proc=proc)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def oai(server):
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=server.key, max_retries=0, timeout=300)


CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.slow
def test_models_list(oai):
    models = oai.models.list()
    assert [m.id for m in models.data] == [BASE]
    assert models.data[0].object == "model" and models.data[0].owned_by
    assert oai.models.retrieve(BASE).id == BASE


@pytest.mark.slow
def test_chat_non_streaming_and_streaming_agree(oai):
    r = oai.chat.completions.create(model=BASE, messages=CHAT, temperature=0, max_tokens=12)
    assert r.object == "chat.completion" and r.model == BASE and len(r.choices) == 1
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 12 and u.total_tokens == u.prompt_tokens + u.completion_tokens

    stream = oai.chat.completions.create(model=BASE, messages=CHAT, temperature=0, max_tokens=12, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    content = [ch for ch in chunks if ch.choices]
    assert content[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in content)
    assert text == c.message.content
    assert content[-1].choices[0].finish_reason == c.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == u.completion_tokens


@pytest.mark.slow
def test_chat_n_and_stop(oai):
    r = oai.chat.completions.create(model=BASE, messages=CHAT, temperature=0.9, top_p=0.9, n=3, max_tokens=10,
                                    seed=7, stop=["\n", "."])
    assert [c.index for c in r.choices] == [0, 1, 2]
    for c in r.choices:
        assert "\n" not in c.message.content and "." not in c.message.content
    r = oai.chat.completions.create(model=BASE, messages=CHAT, temperature=0, max_tokens=1)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 1
    # Stop strings the answer really contains (words of the greedy answer itself): with them the answer is cut
    # just before the first one, so this cannot pass because a stop word never came up.
    free = oai.chat.completions.create(model=BASE, messages=CHAT, temperature=0, max_tokens=12).choices[0]
    words = free.message.content.split()
    assert len(words) >= 4, free.message.content
    for stop in (words[2], [words[3], words[1]]):
        first = [stop] if isinstance(stop, str) else stop
        cut = min(free.message.content.find(w) for w in first)
        r = oai.chat.completions.create(model=BASE, messages=CHAT, temperature=0, max_tokens=12, stop=stop)
        assert r.choices[0].message.content == free.message.content[:cut], (stop, free.message.content)
        assert r.choices[0].finish_reason == "stop"


@pytest.mark.slow
def test_text_completions(oai):
    r = oai.completions.create(model=BASE, prompt=["The capital of France is", "One, two, three,"], max_tokens=6,
                               n=2, temperature=0.7, stop=["\n"], seed=1)
    assert r.object == "text_completion"
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert all("\n" not in c.text for c in r.choices)
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens <= 4 * 6
    chunks = list(oai.completions.create(model=BASE, prompt="One, two, three,", max_tokens=5, temperature=0,
                                         stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip() and chunks[-1].choices[0].finish_reason in ("stop", "length")
    plain = oai.completions.create(model=BASE, prompt="One, two, three,", max_tokens=5, temperature=0)
    assert plain.choices[0].text == text


@pytest.mark.slow
def test_streamed_choices_decode_together_and_differ(oai):
    """n streamed choices are rows of one batch (their chunks interleave) with their own seeds."""
    chunks = list(oai.chat.completions.create(model=BASE, messages=CHAT, temperature=1.0, max_tokens=16, n=2,
                                              seed=3, stream=True))
    order = [ch.choices[0].index for ch in chunks if ch.choices and ch.choices[0].delta.content]
    texts = ["".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices and ch.choices[0].index == i)
             for i in (0, 1)]
    finals = {ch.choices[0].index: ch.choices[0].finish_reason for ch in chunks
              if ch.choices and ch.choices[0].finish_reason}
    assert set(finals) == {0, 1} and all(texts)
    assert texts[0] != texts[1]
    # Decoded one after the other, every chunk of choice 0 would come first.
    assert order.index(1) < len(order) - 1 - order[::-1].index(0), order


@pytest.mark.slow
def test_raw_stream_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/chat/completions", headers=bearer(server.key), timeout=120,
                      json={"model": BASE, "messages": CHAT, "max_tokens": 3, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"


@pytest.mark.slow
def test_errors_through_the_client(server, oai):
    import openai

    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="adp_does_not_exist", messages=CHAT)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.UnprocessableEntityError):
        oai.chat.completions.create(model=BASE, messages=CHAT, temperature=5)
    with pytest.raises(openai.APIStatusError) as e:
        oai.chat.completions.create(model=BASE, messages=[{"role": "user", "content": "x" * 5000}])
    assert e.value.status_code == 413


@pytest.mark.slow
def test_concurrent_chat_requests(oai):
    results: list[str] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            r = oai.chat.completions.create(model=BASE, messages=[{"role": "user", "content": f"Say {i}."}],
                                            temperature=0, max_tokens=4)
            results.append(r.choices[0].message.content)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and len(results) == 8


@pytest.mark.slow
def test_chunked_body_over_the_limit_is_413_on_a_real_server(server):
    """No Content-Length: the server counts the bytes as they arrive."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        head = (f"POST /v1/documents HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.key}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        s.sendall(head.encode())
        payload = b'{"text": "' + b"a" * 10_000 + b'"}'
        try:
            for i in range(0, len(payload), 1000):
                part = payload[i:i + 1000]
                s.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = s.recv(4096).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413"), reply


@pytest.mark.slow
def test_odd_but_valid_requests_never_5xx(server):
    odd = [
        ("/v1/chat/completions", {"messages": [{"role": "assistant", "content": "Hello."}]}),
        ("/v1/chat/completions", {"messages": [{"role": "system", "content": ""}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": ""}]}),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]}),
        ("/v1/chat/completions", {"messages": [{"role": "developer", "content": "Be terse."},
                                               {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                                            {"type": "image_url", "image_url": {}}]}]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}], "n": 8, "max_tokens": 1}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": 0, "top_p": 1e-9,
                                  "stop": ["\u00e9", "\n\n"], "seed": -5, "logprobs": True, "tools": []}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "\u4e2d\u6587 \U0001F600"}],
                                  "stream": True, "n": 2, "max_tokens": 2}),
        ("/v1/completions", {"prompt": " ", "max_tokens": 1, "echo": True, "suffix": "x", "best_of": 3}),
        ("/v1/completions", {"prompt": ["\u0000", "a"], "max_tokens": 2, "stream": True}),
    ]
    for path, body in odd:
        r = httpx.post(server.url + path, headers=bearer(server.key), json={"model": BASE, "max_tokens": 4, **body},
                       timeout=120)
        # Valid requests (odd, not wrong): a 200 with a well-formed answer, not merely "no 5xx".
        assert r.status_code == 200, (body, r.status_code, r.text[:300])
        if body.get("stream"):
            assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text, r.text[-300:]
        else:
            out = r.json()
            n = body.get("n", 1) * (len(body["prompt"]) if isinstance(body.get("prompt"), list) else 1)
            assert len(out["choices"]) == n and out["usage"]["completion_tokens"] <= n * body.get("max_tokens", 4)


@pytest.mark.slow
def test_a_request_arriving_mid_decode_finishes_before_the_long_one(server):
    """Continuous batching: the short request joins the running batch instead of waiting for it."""
    chunks: list[float] = []
    started = threading.Event()

    def long_stream() -> None:
        with httpx.stream("POST", server.url + "/v1/chat/completions", headers=bearer(server.key), timeout=300,
                          json={"model": BASE, "max_tokens": 64, "temperature": 0, "stream": True,
                                "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}) as r:
            for line in r.iter_lines():
                if '"content"' in line:
                    chunks.append(time.monotonic())
                    started.set()

    t = threading.Thread(target=long_stream)
    t.start()
    assert started.wait(300)
    r = httpx.post(server.url + "/v1/chat/completions", headers=bearer(server.key), timeout=300,
                   json={"model": BASE, "max_tokens": 3, "temperature": 0, "messages": CHAT})
    short_done = time.monotonic()
    t.join(300)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
    assert len(chunks) > 5, "the long request ended too early to test anything"
    assert short_done < chunks[-1]


# --- a client that leaves mid-stream ----------------------------------------------------------


@pytest.fixture
def one_slot_server(tmp_path, bundle):
    """A uvicorn server in this process (so its decoder and admission counters can be read) with one
    generation slot and no waiting room: a request that finds the slot taken is refused at once (503)."""
    import uvicorn

    from api.main import create_app

    settings = service_settings(tmp_path, TEST_DATA_DIR, max_active_generations=1, generation_queue_size=0)
    key = new_key(settings, "acme")
    app = create_app(settings)  # its model is the session's `bundle` (one per process and settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz", 60)
        yield SimpleNamespace(url=url, key=key, app=app)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_a_client_leaving_a_stream_frees_its_decode_row_and_slot(one_slot_server):
    s = one_slot_server
    url, h = s.url + "/v1/chat/completions", bearer(s.key)
    body = {"model": BASE, "max_tokens": 160, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}
    short = {**body, "max_tokens": 2}
    # Read to the end, this answer takes all of its max_tokens: leaving early must spare most of them.
    full = httpx.post(url, headers=h, json=body, timeout=300).json()
    assert full["usage"]["completion_tokens"] == 160, full
    engine, admission = s.app.state.inference._engine, s.app.state.limits.admission  # noqa: SLF001
    steps0 = engine.steps
    with httpx.stream("POST", url, headers=h, json={**body, "stream": True}, timeout=300) as r:
        assert r.status_code == 200
        chunks = 0
        for line in r.iter_lines():
            chunks += '"content"' in line
            if chunks == 3:
                # Under way: its row decodes and it holds the one slot, so another request is refused.
                assert len(engine.decoder.rows) == 1 and admission.active == 1
                assert httpx.post(url, headers=h, json=short, timeout=60).status_code == 503
                break  # leaving the line iterator closes the connection: the client is gone
    wait_for(lambda: not engine.decoder.rows and admission.active == 0, 30, 0.05,
             what="the stream's row and slot to be given back")
    decoded = engine.steps - steps0
    time.sleep(0.5)
    assert engine.steps - steps0 == decoded  # nothing is decoded for it any more
    assert decoded < 80, decoded  # it stopped soon after the client left, not at max_tokens
    r = httpx.post(url, headers=h, json=short, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
