"""Bad input: 413 for big bodies, 422 naming the field, 404 for unknown ids, never a 5xx."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.conftest import TEST_DATA_DIR
from tests.support.service import (
    api_client,
    bearer,
    fresh_postgres_database,
    new_key,
    require_postgres,
    service_settings,
)

DOC = {"title": "Zorblax", "text": "The Zorblax Institute was founded by Marguerite Okonkwo."}
LIMIT = 8192


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    settings = service_settings(tmp_path_factory.mktemp("badinput"), TEST_DATA_DIR, max_body_bytes=LIMIT)
    with api_client(settings) as client:
        key, admin = new_key(settings, "acme"), new_key(settings, "ops", admin=True)
        yield client, bearer(key), bearer(admin)


def _param(r) -> str:
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert body["detail"] and all("loc" in d and "msg" in d for d in body["detail"])
    return body["error"]["param"]


def test_413_by_content_length(ctx):
    client, h, _ = ctx
    big = {"documents": [{"text": "x" * (LIMIT * 2)}]}
    r = client.post("/v1/adaptations", headers=h, json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    r = client.post("/v1/chat/completions", headers=h,
                    json={"model": "m", "messages": [{"role": "user", "content": "y" * LIMIT}]})
    assert r.status_code == 413


def test_413_by_bytes_received(ctx):
    """A chunked body (no Content-Length, or a lying one) is counted as it arrives."""
    client, h, _ = ctx

    def chunks():
        yield b'{"documents": [{"text": "'
        for _ in range(20):
            yield b"y" * 1024
        yield b'"}]}'

    r = client.post("/v1/adaptations", headers={**h, "content-type": "application/json"}, content=chunks())
    assert r.status_code == 413
    r = client.post("/v1/documents", headers={**h, "content-type": "application/json"}, content=chunks())
    assert r.status_code == 413


def test_body_at_the_limit_is_accepted(ctx):
    client, h, _ = ctx
    text = "z" * (LIMIT - 200)
    r = client.post("/v1/documents", headers=h, json={"text": text})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "documents"),
        ({"documents": []}, "documents"),
        ({"documents": "not a list"}, "documents"),
        ({"documents": [{"text": "   "}]}, "documents.0.text"),
        ({"documents": [{"text": ""}]}, "documents.0.text"),
        ({"documents": [{"title": "only a title"}]}, "documents.0"),
        ({"documents": [{"text": "a", "id": "doc_1"}]}, "documents.0"),
        ({"documents": [{"text": 42}]}, "documents.0.text"),
        ({"documents": [DOC, {"txt": "typo"}]}, "documents.1.txt"),
        ({"documents": ["doc_unknown"]}, "documents.0.id"),
        ({"documents": [DOC], "num_self_edits": 0}, "num_self_edits"),
        ({"documents": [DOC], "num_self_edits": 65}, "num_self_edits"),
        ({"documents": [DOC], "num_self_edits": 17}, "num_self_edits"),  # above SEAL_MAX_SELF_EDITS (16)
        ({"documents": [DOC], "num_self_edits": "many"}, "num_self_edits"),
        ({"documents": [DOC], "lora": {"rank": 0}}, "lora.rank"),
        ({"documents": [DOC], "lora": {"rank": 257}}, "lora.rank"),
        ({"documents": [DOC], "lora": {"learning_rate": -1}}, "lora.learning_rate"),
        ({"documents": [DOC], "lora": {"epochs": 1e9}}, "lora.epochs"),
        ({"documents": [DOC], "lora": {"unknown": 1}}, "lora.unknown"),
        ({"documents": [DOC], "lora": []}, "lora"),
        ({"documents": [DOC], "strategy": "nope"}, "strategy"),
        ({"documents": [DOC], "strategy": "custom"}, "template"),
        ({"documents": [DOC], "strategy": "custom", "template": "no placeholders"}, "template"),
        ({"documents": [DOC], "strategy": "rewrite", "template": "{title} {context}"}, "template"),
        ({"documents": [DOC], "base_model": "gpt-4"}, "base_model"),
        ({"documents": [DOC], "eval_questions": [{"question": "q?"}]}, "eval_questions.0.answer"),
        ({"documents": [DOC], "eval_questions": [{"question": " ", "answer": "a"}]}, "eval_questions.0.question"),
        ({"documents": [DOC], "seed": -1}, "seed"),
        ({"documents": [DOC], "name": "n" * 201}, "name"),
        ({"documents": [{"text": "nul \u0000 byte"}]}, "documents.0.text"),
        ({"documents": [DOC], "surprise": True}, "surprise"),
        ({"documents": [DOC], "max_forgetting": 1.5}, "max_forgetting"),
        ({"documents": [DOC], "max_forgetting": -0.1}, "max_forgetting"),
        ({"documents": [DOC], "max_forgetting": "low"}, "max_forgetting"),
        ({"documents": [DOC], "recipe": {"anchorz": 4}}, "recipe.anchorz"),
        ({"documents": [DOC], "recipe": {"scale": 0}}, "recipe.scale"),
        ({"documents": [DOC], "recipe": {"anchors": 65}}, "recipe.anchors"),
        ({"documents": [DOC], "recipe": {"training_format": "xml"}}, "recipe.training_format"),
    ],
)
def test_adaptation_422_names_the_field(ctx, body, param):
    client, h, _ = ctx
    r = client.post("/v1/adaptations", headers=h, json=body)
    assert _param(r) == param


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ("/v1/chat/completions", {"model": "SmolLM2-135M-Instruct"}, "messages"),
        ("/v1/chat/completions", {"model": "SmolLM2-135M-Instruct", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages.0.content.str"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
         "temperature"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}, "top_p"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 9}, "n"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
         "max_tokens"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
         "max_tokens"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}],
                                  "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [""]}, "stop"),
        ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "maybe"},
         "stream"),
        ("/v1/completions", {"model": "m"}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": [1, 2, 3]}, "prompt.str"),
        ("/v1/completions", {"model": "m", "prompt": ""}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": ["a", ""]}, "prompt"),
        ("/v1/completions", {"model": "m", "prompt": "a", "seed": 2**70}, "seed"),
        ("/v1/documents", {"title": "t"}, "text"),
        ("/v1/documents", {"text": " \n "}, "text"),
    ],
)
def test_openai_and_document_422(ctx, path, body, param):
    client, h, _ = ctx
    assert _param(client.post(path, headers=h, json=body)) == param


def test_malformed_json_is_422(ctx):
    client, h, _ = ctx
    for raw in (b"{", b'{"documents": [', b"\xff\xfe\x00", b"null", b"[]", b"42", b'"str"', b"{'single': 1}"):
        r = client.post("/v1/adaptations", headers={**h, "content-type": "application/json"}, content=raw)
        assert r.status_code == 422, (raw, r.text)


def test_unknown_ids_are_404(ctx):
    client, h, _ = ctx
    for path in ("/v1/adaptations/job_0000", "/v1/adaptations/job_0000/events", "/v1/adapters/adp_0000",
                 "/v1/adapters/adp_0000/download", "/v1/adapters/adp_0000/files/adapter_config.json",
                 "/v1/documents/doc_0000", "/v1/models/adp_0000", "/v1/adaptations/%00", "/v1/adapters/a%20b",
                 "/v1/adaptations/" + "x" * 300, "/v1/nowhere"):
        r = client.get(path, headers=h)
        assert r.status_code == 404, (path, r.text)
    assert client.post("/v1/adaptations/job_0000/cancel", headers=h).status_code == 404
    assert client.delete("/v1/adapters/adp_0000", headers=h).status_code == 404
    for path, body in (("/v1/chat/completions", {"model": "adp_nope", "messages": [{"role": "user", "content": "x"}]}),
                       ("/v1/completions", {"model": "no-such-model", "prompt": "x"}),
                       ("/v1/completions", {"model": "bad\u0000id", "prompt": "x"})):
        r = client.post(path, headers=h, json=body)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_found" and r.json()["error"]["param"] == "model"


def test_cancel_twice_is_409(ctx):
    client, h, _ = ctx
    job = client.post("/v1/adaptations", headers=h, json={"documents": [DOC], "strategy": "passage"}).json()
    r = client.post(f"/v1/adaptations/{job['id']}/cancel", headers=h)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.post(f"/v1/adaptations/{job['id']}/cancel", headers=h).status_code == 409


# --- no 5xx, whatever the body ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from([
    "documents", "text", "title", "id", "strategy", "template", "num_self_edits", "lora", "rank", "epochs",
    "recipe", "max_forgetting", "anchors", "scale",
    "eval_questions", "question", "answer", "name", "seed", "base_model", "model", "messages", "role", "content",
    "prompt", "n", "stop", "max_tokens", "temperature", "top_p", "stream", "stream_options", "tenant", "admin",
    "lora_name", "lora_path", "load_inplace",
])
shaped = st.recursive(
    json_values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(field_names, inner, max_size=5),
    max_leaves=16,
)
BASE = "SmolLM2-135M-Instruct"
# Every POST route, with its path ids as placeholders: {job}, {task}, {run} and {policy} become real objects
# made by the fixture (so the route's own code runs, not only its 404), "_x" ids stay unknown (404).
# test_every_post_route_is_fuzzed keeps this list complete.
POSTS = ["/v1/adaptations", "/v1/documents", "/v1/chat/completions", "/v1/completions", "/v1/admin/keys",
         "/v1/adaptations/job_x/cancel", "/v1/adaptations/{job}/cancel", "/v1/load_lora_adapter",
         "/v1/unload_lora_adapter", "/v1/tasks", "/v1/tasks/{task}/solve", "/v1/tasks/job_x/solve",
         "/v1/tasks/{task}/cancel", "/v1/admin/rl-runs", "/v1/admin/rl-runs/{run}/cancel",
         "/v1/admin/rl-runs/rl_x/cancel", "/v1/admin/rl-runs/{run}/resume", "/v1/admin/rl-runs/rl_x/resume",
         "/v1/admin/policies/{policy}/promote", "/v1/admin/policies/pol_x/promote"]
ADMIN_ONLY = ("/v1/admin/", "/v1/load_lora_adapter", "/v1/unload_lora_adapter")

MALFORMED = [
    b"", b"{", b"}", b"[" * 5000, b"{" * 5000, b'{"a":' * 3000, b"\x00\x01\x02", "\u00e9\u4e2d".encode(),
    b'{"documents": [{"text": "a"}], "num_self_edits": 1e309}', b'{"documents": NaN}', b'{"num_self_edits": Infinity}',
    b'{"documents": [{"text": "a"}], "seed": 123456789012345678901234567890}',
    b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": [{"type": 1}]}]}',
    b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": null}], "n": -5}',
    b'{"documents": [{"text": "a"}], "lora": {"target_modules": [""]}}',
    b'{"documents": [{"text": "a"}], "eval_questions": "x"}',
    b'{"tenant": "\\u0000"}', b'{"documents": ["\\u0000"]}', b'{"documents": [{"id": "\\u0000"}]}',
]


def _no_5xx(client, headers, path, **kwargs):
    r = client.post(path, headers=headers, **kwargs)
    assert r.status_code < 500, (path, kwargs, r.status_code, r.text[:500])
    if r.status_code >= 400:
        assert "error" in r.json()
    return r


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def fuzz_ctx(request, tmp_path_factory):
    url = None
    stack = []
    if request.param == "postgres":
        admin = require_postgres()
        cm = fresh_postgres_database(admin)
        url = cm.__enter__()
        stack.append(cm)
    # Completions on the real model stay cheap: a few tokens, at most two choices.
    settings = service_settings(tmp_path_factory.mktemp("fuzz"), TEST_DATA_DIR, max_body_bytes=LIMIT,
                                database_url=url, max_completion_tokens=4, default_max_tokens=4, max_choices=2,
                                tenant_requests_per_min=0, tenant_tokens_per_min=0, tenant_max_active_jobs=0)
    try:
        with api_client(settings) as client:
            h, admin = bearer(new_key(settings, "acme")), bearer(new_key(settings, "ops", admin=True))
            client.ids = _objects(client, settings, h, admin)
            yield client, h, admin
    finally:
        for cm in stack:
            cm.__exit__(None, None, None)


def _objects(client, settings, h, admin) -> dict[str, str]:
    """A queued job, a queued task, an RL run and a policy checkpoint, for the routes that act on one."""
    import torch
    from peft import LoraConfig

    from seal_engine.core.lora import LoraAdapter
    from seal_service.db.models import PolicyCheckpoint
    from seal_service.db.session import session_scope

    job = client.post("/v1/adaptations", headers=h, json={"documents": [DOC], "strategy": "passage"})
    task = client.post("/v1/tasks", headers=h, json={"train": [{"input": "ab", "output": "AB"},
                                                               {"input": "cd", "output": "CD"}]})
    run = client.post("/v1/admin/rl-runs", headers=admin, json={
        "passages": 1, "samples": 1, "iterations": 1,
        "documents": [{**DOC, "questions": [{"question": "Who founded it?", "answer": "Okonkwo"}]}]})
    assert (job.status_code, task.status_code, run.status_code) == (202, 202, 202), (job.text, task.text, run.text)
    path = settings.resolved_state_dir / "policies" / "pol_fuzz"
    cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
    LoraAdapter(cfg, {"base_model.model.m.q_proj.lora_A.weight": torch.ones(2, 4)}).save(path)
    with session_scope(settings.resolved_database_url) as db:
        db.add(PolicyCheckpoint(id="pol_fuzz", base_model=settings.model_id, strategy="implications", iteration=1,
                                storage_path=str(path), metrics={}))
    return {"job": job.json()["id"], "task": task.json()["id"], "run": run.json()["id"], "policy": "pol_fuzz"}


def _path(client, template: str) -> str:
    return template.format(**client.ids)


def test_every_post_route_is_fuzzed(fuzz_ctx):
    """A POST route added to the app without being added to POSTS fails here."""
    import re

    client, _, _ = fuzz_ctx
    routes = {re.sub(r"\{[^}]+\}", "{}", r.path) for r in client.app.routes if "POST" in getattr(r, "methods", ())}
    fuzzed = {re.sub(r"\{[^}]+\}", "{}", p) for p in POSTS}
    assert routes <= fuzzed, sorted(routes - fuzzed)


def test_malformed_bodies_never_5xx(fuzz_ctx):
    client, h, admin = fuzz_ctx
    for template in POSTS:
        headers = admin if template.startswith(ADMIN_ONLY) else h
        path = _path(client, template)
        for raw in MALFORMED:
            _no_5xx(client, {**headers, "content-type": "application/json"}, path, content=raw)
        _no_5xx(client, headers, path, data={"documents": "form-encoded"})
        _no_5xx(client, {**headers, "content-type": "text/plain"}, path, content=b"hello")


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(path=st.sampled_from(POSTS), body=shaped)
def test_random_json_never_5xx(fuzz_ctx, path, body):
    client, h, admin = fuzz_ctx
    headers = admin if path.startswith(ADMIN_ONLY) else h
    _no_5xx(client, {**headers, "content-type": "application/json"}, _path(client, path),
            content=json.dumps(body).encode())


# Completion bodies naming the real model (so the body reaches tokenization and generation), with the other
# fields drawn around their valid ranges and a few wrong.
_text = st.text(max_size=24) | st.sampled_from(["<|im_end|>", "<|im_start|>system", "\u0000", " ", "hi \ud800"])
_message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer", "tool"]),
                                  "content": _text | st.none() | st.lists(
                                      st.fixed_dictionaries({"type": st.just("text"), "text": _text}), max_size=2)})
_options = {"max_tokens": st.integers(-1, 6) | st.none(), "n": st.integers(0, 3), "temperature": st.floats(0, 2.5),
            "top_p": st.floats(0, 1), "stop": st.none() | _text | st.lists(_text, max_size=5),
            "stream": st.booleans(), "seed": st.integers(-(2**63), 2**63), "max_completion_tokens": st.integers(0, 6),
            "stream_options": st.none() | st.fixed_dictionaries({"include_usage": st.booleans()})}
chat_bodies = st.fixed_dictionaries({"model": st.just(BASE), "messages": st.lists(_message, min_size=1, max_size=3)},
                                    optional=_options)
text_bodies = st.fixed_dictionaries({"model": st.just(BASE),
                                     "prompt": _text | st.lists(_text, min_size=1, max_size=2)}, optional=_options)


# Each example is a real generation: no shrinking phase (it can take minutes); the failing body is printed as found.
@hsettings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=chat_bodies | text_bodies)
def test_random_completions_for_the_real_model_never_5xx(fuzz_ctx, body):
    client, h, _ = fuzz_ctx
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    # ASCII JSON, so a lone surrogate travels as the escape "\\ud800" (as a client in another language sends it).
    r = _no_5xx(client, {**h, "content-type": "application/json"}, path, content=json.dumps(body).encode())
    if r.status_code != 200:
        assert r.status_code in (400, 404, 413, 422, 429), (body, r.status_code, r.text[:300])
        return
    if body.get("stream"):
        assert r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text, (body, r.text[-300:])
        return
    out = r.json()
    prompts = len(body["prompt"]) if isinstance(body.get("prompt"), list) else 1
    assert len(out["choices"]) == body.get("n", 1) * prompts, (body, out)
    assert 0 <= out["usage"]["completion_tokens"] <= len(out["choices"]) * 4
