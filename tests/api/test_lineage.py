"""Versions and aliases through the API, with real jobs on the tiny model: a chain of three versions that
each answer their own and their ancestors' made-up facts, rollback by alias, a rejected version that leaves
the alias where it was, deleting a version under its children, tenant isolation, bad input."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import TEST_DATA_DIR
from tests.support.service import api_client, bearer, new_key, service_settings
from workers.adaptation.run import run_adaptation

FACTS = [
    ({"title": "Zorblax Institute", "text": "The Zorblax Institute is a research centre in Valparaiso. It was founded "
      "in 1887 by the chemist Marguerite Okonkwo."}, "Who founded the Zorblax Institute?", "Okonkwo"),
    ({"title": "Quillon Observatory", "text": "The Quillon Observatory stands on Mount Tervane. Its first director "
      "was the astronomer Ingrid Haldorsen."}, "Who was the first director of the Quillon Observatory?", "Haldorsen"),
    ({"title": "Brannock Bridge", "text": "The Brannock Bridge crosses the river Elsmere. It was designed by the "
      "engineer Tobias Wrenfield."}, "Who designed the Brannock Bridge?", "Wrenfield"),
]


@pytest.fixture(scope="module")
def svc(tmp_path_factory, bundle):
    # Every request served by the adapter it names (no relevance routing): the test reads what the weights know.
    # A smaller general-knowledge gate than the server's (12 probes, 12 tokens): cheaper, and still sure to
    # reject the harsh update of the rejection test.
    # The chain is graded on 48-token replies, as _ask reads them (greedy: the same first 48 tokens).
    settings = service_settings(tmp_path_factory.mktemp("lineage"), TEST_DATA_DIR, recipe={"relevance": False},
                                forgetting_probes=12, forgetting_prompts=2, forgetting_probe_tokens=12,
                                lineage_answer_tokens=48)
    with api_client(settings) as client:
        yield SimpleNamespace(client=client, settings=settings, bundle=bundle, h=bearer(new_key(settings, "acme")),
                              other=bearer(new_key(settings, "globex")), versions=[])


def _adapt(svc, fact: int, **body) -> dict:
    doc, question, answer = FACTS[fact]
    r = svc.client.post("/v1/adaptations", headers=svc.h, json={
        "documents": [doc], "eval_questions": [{"question": question, "answer": answer}], **body})
    assert r.status_code == 202, r.text
    run_adaptation(svc.settings, r.json()["id"], bundle_fn=lambda _s: svc.bundle)
    return svc.client.get(f"/v1/adaptations/{r.json()['id']}", headers=svc.h).json()


def _ask(svc, model: str, question: str, h=None) -> dict:
    r = svc.client.post("/v1/chat/completions", headers=h or svc.h, json={
        "model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 48, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def _alias(svc, name: str) -> str:
    r = svc.client.get(f"/v1/aliases/{name}", headers=svc.h)
    assert r.status_code == 200, r.text
    return r.json()["adapter_id"]


@pytest.mark.slow
def test_a_chain_of_three_versions_each_knows_its_own_and_its_ancestors_facts(svc):
    parent = None
    for step in range(3):
        # The general-knowledge gate's bound is not what this test is about: the weights of a version that
        # knows three passages forget more general probes than the default 0.3 allows on this tiny model.
        job = _adapt(svc, step, alias="kb-support", max_forgetting=0.6, **({"parent": "kb-support"} if parent else {}))
        assert job["status"] == "succeeded", job["error"]
        assert job["parent_id"] == parent and job["alias"] == "kb-support"
        parent = job["adapter_id"]
        svc.versions.append(parent)
        assert _alias(svc, "kb-support") == parent  # the alias follows each new version
    for step, adapter_id in enumerate(svc.versions):
        for fact in range(step + 1):
            reply = _ask(svc, adapter_id, FACTS[fact][1])["choices"][0]["message"]["content"]
            assert FACTS[fact][2].lower() in reply.lower(), (step, fact, reply)
    latest = svc.client.get(f"/v1/adapters/{svc.versions[2]}", headers=svc.h).json()
    assert latest["parent_id"] == svc.versions[1] and latest["aliases"] == ["kb-support"]
    lineage = latest["lineage"]
    assert [v["adapter_id"] for v in lineage["versions"]] == svc.versions
    assert [d["adapter_id"] for d in lineage["documents"]] == svc.versions
    # The forgetting matrix: row i holds version i's grades on versions 0..i's questions.
    assert [len(row) for row in lineage["matrix"]] == [1, 2, 3]
    assert lineage["matrix"][2][2] == lineage["versions"][2]["accuracy"] == latest["metrics"]["chain"]["own"]
    assert latest["metrics"]["chain"]["ancestors"][0]["adapter_id"] == svc.versions[0]
    models = {m["id"]: m for m in svc.client.get("/v1/models", headers=svc.h).json()["data"]}
    assert models["kb-support"]["kind"] == "alias" and models["kb-support"]["adapter_id"] == svc.versions[2]
    assert models[svc.versions[2]]["parent_id"] == svc.versions[1] and models[svc.versions[2]]["lineage"] == lineage


@pytest.mark.slow
def test_rollback_moves_the_alias_and_requests_follow_it(svc):
    assert len(svc.versions) == 3, "needs the chain of the test above"
    question = FACTS[2][1]
    before = _ask(svc, "kb-support", question)
    assert before["model"] == "kb-support"
    assert before["choices"][0]["message"]["content"] == _ask(svc, svc.versions[2], question)["choices"][0]["message"]["content"]
    r = svc.client.put("/v1/aliases/kb-support", headers=svc.h, json={"adapter_id": svc.versions[1]})
    assert r.status_code == 200 and r.json()["adapter_id"] == svc.versions[1]
    after = _ask(svc, "kb-support", question)["choices"][0]["message"]["content"]
    assert after == _ask(svc, svc.versions[1], question)["choices"][0]["message"]["content"]
    assert FACTS[2][2].lower() not in after.lower()  # the rolled-back version never learned the bridge
    assert [a["name"] for a in svc.client.get("/v1/aliases", headers=svc.h).json()["data"]] == ["kb-support"]


@pytest.mark.slow
def test_a_rejected_version_leaves_the_alias_where_it_was(svc):
    assert len(svc.versions) == 3, "needs the chain of the tests above"
    was = _alias(svc, "kb-support")
    # No rehearsal and a harsh update: the gate rejects it (general knowledge or an ancestor's facts).
    job = _adapt(svc, 2, parent="kb-support", alias="kb-support", max_forgetting=0.05, recipe={"rehearse": False},
                 lora={"epochs": 12, "learning_rate": 1e-2})
    assert job["status"] == "failed"
    assert job["error"]["code"] in ("forgetting_exceeded", "ancestor_forgetting_exceeded"), job["error"]
    assert _alias(svc, "kb-support") == was
    assert job["adapter_id"] is None


@pytest.mark.slow
def test_deleting_a_version_leaves_its_children_working(svc):
    assert len(svc.versions) == 3, "needs the chain of the tests above"
    # An alias pins its version: deleting it would break the requests that use the alias.
    pinned = _alias(svc, "kb-support")
    r = svc.client.delete(f"/v1/adapters/{pinned}", headers=svc.h)
    assert r.status_code == 409 and "kb-support" in r.json()["error"]["message"]
    assert svc.client.delete(f"/v1/adapters/{svc.versions[0]}", headers=svc.h).status_code == 200
    child = svc.client.get(f"/v1/adapters/{svc.versions[2]}", headers=svc.h).json()
    assert [v["adapter_id"] for v in child["lineage"]["versions"]][0] == svc.versions[0]
    reply = _ask(svc, svc.versions[2], FACTS[0][1])["choices"][0]["message"]["content"]
    assert FACTS[0][2].lower() in reply.lower()  # its weights carry the deleted root's fact
    # A deleted version cannot be a parent.
    r = svc.client.post("/v1/adaptations", headers=svc.h, json={"documents": [FACTS[0][0]], "parent": svc.versions[0]})
    assert r.status_code == 404 and r.json()["error"]["param"] == "parent"


def test_chains_and_aliases_are_per_tenant(svc):
    mine = svc.versions[-1] if svc.versions else "adp_0"
    other = svc.other
    r = svc.client.post("/v1/adaptations", headers=other, json={"documents": [FACTS[0][0]], "parent": mine})
    assert r.status_code == 404 and r.json()["error"]["param"] == "parent"
    r = svc.client.post("/v1/adaptations", headers=other, json={"documents": [FACTS[0][0]], "parent": "kb-support"})
    assert r.status_code == 404
    assert svc.client.put("/v1/aliases/kb-support", headers=other, json={"adapter_id": mine}).status_code == 404
    assert svc.client.get("/v1/aliases", headers=other).json()["data"] == []
    assert svc.client.get("/v1/aliases/kb-support", headers=other).status_code == 404
    r = svc.client.post("/v1/chat/completions", headers=other, json={
        "model": "kb-support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("body, status, param", [
    ({"parent": "no-such-alias"}, 404, "parent"),
    ({"parent": "adp_0123"}, 404, "parent"),
    ({"alias": "adp_x"}, 422, "alias"),
    ({"alias": "-x"}, 422, "alias"),
    ({"alias": "SmolLM2-135M-Instruct"}, 422, "alias"),
])
def test_bad_parents_and_aliases_are_4xx_with_the_field_named(svc, body, status, param):
    r = svc.client.post("/v1/adaptations", headers=svc.h, json={"documents": [FACTS[0][0]], **body})
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_a_new_version_keeps_its_parents_lora_shape(svc, bundle):
    from tests.support.adapters import register_random_adapter

    adapter_id = register_random_adapter(svc.settings, bundle, "acme")
    for field, value in (("rank", 4), ("alpha", 8), ("target_modules", ["all-linear"])):
        r = svc.client.post("/v1/adaptations", headers=svc.h, json={
            "documents": [FACTS[0][0]], "parent": adapter_id, "lora": {field: value}})
        assert r.status_code == 422 and r.json()["error"]["param"] == f"lora.{field}", r.text
    r = svc.client.post("/v1/adaptations", headers=svc.h, json={
        "documents": [FACTS[0][0]], "parent": adapter_id, "lora": {"epochs": 3}})
    assert r.status_code == 202 and r.json()["parent_id"] == adapter_id
    assert r.json()["lora"]["epochs"] == 3 and r.json()["lora"]["rank"] == 16
    # A parent trained for another base model cannot be continued here.
    foreign = register_random_adapter(svc.settings, bundle, "acme", seed=1, base_model="someone/other-model")
    r = svc.client.post("/v1/adaptations", headers=svc.h, json={"documents": [FACTS[0][0]], "parent": foreign})
    assert r.status_code == 422 and r.json()["error"]["param"] == "parent" and "other-model" in r.text


def test_alias_routes_refuse_what_they_cannot_point_at(svc):
    r = svc.client.put("/v1/aliases/kb-new", headers=svc.h, json={"adapter_id": "adp_missing"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "adapter_id"
    r = svc.client.put("/v1/aliases/SmolLM2-135M-Instruct", headers=svc.h, json={"adapter_id": "adp_missing"})
    assert r.status_code == 422
    assert svc.client.put("/v1/aliases/bad_name", headers=svc.h, json={"adapter_id": "x"}).status_code == 422
    assert svc.client.put("/v1/aliases/kb-new", headers=svc.h, json={}).status_code == 422
    assert svc.client.delete("/v1/aliases/never-made", headers=svc.h).status_code == 404
