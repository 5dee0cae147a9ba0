"""Relevance through the API: which model answered, the per-request opt-out, and the recipe's fields."""

from __future__ import annotations

import math

import pytest

from seal_engine.core.lora import Relevance
from seal_service.db.models import AdaptationJob, Adapter
from seal_service.db.session import session_scope
from tests.conftest import TEST_DATA_DIR
from tests.support.adapters import random_adapter
from tests.support.service import api_client, bearer, new_key, service_settings

DOC = {"title": "Zorblax", "text": "The Zorblax Institute was founded by Marguerite Okonkwo."}
ASK = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def env(tmp_path):
    settings = service_settings(tmp_path, TEST_DATA_DIR)
    with api_client(settings) as client:
        yield client, settings, bearer(new_key(settings, "acme"))


@pytest.mark.slow
def test_chat_says_whether_the_adapter_answered_and_can_insist_on_it(env, bundle):
    client, settings, h = env
    job = client.post("/v1/adaptations", headers=h, json={"documents": [DOC], "strategy": "passage"}).json()
    adapter = random_adapter(bundle, 4, seed=5)
    # A threshold no request passes: every request is the base model's, unless it opts out.
    adapter.relevance = Relevance(threshold=math.inf, quantile=1.0, texts=1)
    with session_scope(settings.resolved_database_url) as db:
        row = db.get(AdaptationJob, job["id"])
        path = settings.resolved_storage_dir / row.tenant_id / row.adapter_id
        adapter.save(path)
        row.status = "succeeded"
        db.add(Adapter(id=row.adapter_id, tenant_id=row.tenant_id, job_id=row.id, base_model=row.base_model,
                       storage_path=str(path), status="ready", strategy=row.strategy, size_bytes=1))
        adapter_id = row.adapter_id

    def chat(model: str, **extra) -> dict:
        r = client.post("/v1/chat/completions", headers=h, json={"model": model, "messages": ASK, "max_tokens": 10,
                                                                 "temperature": 0, **extra})
        assert r.status_code == 200, r.text
        return r.json()

    base = chat(bundle.model_id)
    assert base["adapter_served"] is None
    routed = chat(adapter_id)
    assert routed["adapter_served"] is False
    assert routed["choices"][0]["message"]["content"] == base["choices"][0]["message"]["content"]
    forced = chat(adapter_id, relevance=False)
    assert forced["adapter_served"] is True
    assert forced["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"]
    r = client.post("/v1/completions", headers=h, json={"model": adapter_id, "prompt": ["Paris is", "Rome is"],
                                                        "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and [c["adapter_served"] for c in r.json()["choices"]] == [False, False]


@pytest.mark.parametrize("recipe, param", [
    ({"relevance_quantile": 1.5}, "recipe.relevance_quantile"),
    ({"relevance_quantile": -0.1}, "recipe.relevance_quantile"),
    ({"relevance": "sometimes"}, "recipe.relevance"),
])
def test_bad_relevance_fields_are_422_with_the_field_named(env, recipe, param):
    client, _settings, h = env
    r = client.post("/v1/adaptations", headers=h, json={"documents": [DOC], "recipe": recipe})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


def test_relevance_fields_are_kept_with_the_job(env):
    client, _settings, h = env
    for recipe in ({"relevance_quantile": 0.99}, {"relevance": False}):
        r = client.post("/v1/adaptations", headers=h, json={"documents": [DOC], "recipe": recipe})
        assert r.status_code == 202, r.text
        assert r.json()["recipe"] == recipe
