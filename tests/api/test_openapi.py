"""The OpenAPI document tells the truth: real error responses, the server's limits, valid statuses;
the docs pages work offline."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from tests.conftest import TEST_DATA_DIR
from tests.support.service import api_client, bearer, new_key, service_settings


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    settings = service_settings(tmp_path_factory.mktemp("openapi"), TEST_DATA_DIR, max_documents=5,
                                max_completion_tokens=300, max_choices=3)
    with api_client(settings) as client:
        yield client, bearer(new_key(settings, "acme")), bearer(new_key(settings, "ops", admin=True))


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(ctx, page):
    client, _, _ = ctx
    r = client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    parser = _Refs()
    parser.feed(r.text)
    # Script URLs given to the UI in code (not attributes): the OpenAPI document.
    urls = parser.urls + re.findall(r"url: '([^']+)'", r.text)
    assert len(parser.urls) >= 2, r.text
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), (page, url)
        assert client.get(url).status_code == 200, url
    assert "cdn" not in r.text.lower() and "fonts.googleapis" not in r.text


def _ops(client):
    schema = client.get("/openapi.json").json()
    for path, item in schema["paths"].items():
        for method, op in item.items():
            yield schema, f"{method.upper()} {path}", op


def test_every_operation_documents_its_errors_with_the_error_body(ctx):
    client, _, _ = ctx
    seen = 0
    for schema, label, op in _ops(client):
        codes = set(op["responses"])
        if op.get("security"):
            assert {"401", "429", "503"} <= codes, label
            seen += 1
        if "/admin/" in label or "lora_adapter" in label:
            assert "403" in codes, label
        if "{" in label:
            assert "404" in codes, label
        if "requestBody" in op:
            assert {"413", "422"} <= codes, label
        for code in codes - {"200", "201", "202"}:
            if label == "GET /readyz":
                continue
            ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/ValidationErrorResponse" if code == "422" else "/ErrorResponse"), (label, code)
    assert seen > 30
    assert "HTTPValidationError" not in schema["components"]["schemas"]


@pytest.mark.parametrize("label", ["POST /v1/chat/completions", "POST /v1/completions", "POST /v1/adaptations",
                                   "POST /v1/tasks"])
def test_overload_and_rate_limits_are_documented_with_retry_after(ctx, label):
    client, _, _ = ctx
    op = next(op for _, lbl, op in _ops(client) if lbl == label)
    for code in ("429", "503"):
        assert "Retry-After" in op["responses"][code]["headers"], (label, code)


def test_a_real_error_matches_the_documented_body(ctx):
    client, h, _ = ctx
    components = client.get("/openapi.json").json()["components"]["schemas"]
    info = components["ErrorInfo"]
    for r in (client.get("/v1/adaptations"), client.get("/v1/admin/jobs", headers=h),
              client.post("/v1/documents", headers=h, json={"text": 3})):
        err = r.json()["error"]
        assert set(err) == set(info["properties"]) == set(info["required"]), (r.status_code, err)
    detail = components["ValidationErrorResponse"]["properties"]["detail"]
    assert detail["type"] == "array" and r.json()["detail"][0]["loc"] == ["body", "text"]


def test_the_servers_limits_are_in_the_schema(ctx):
    client, h, _ = ctx
    c = client.get("/openapi.json").json()["components"]["schemas"]
    assert c["AdaptationCreate"]["properties"]["documents"]["maxItems"] == 5
    chat = c["ChatCompletionIn"]["properties"]
    assert [b["maximum"] for b in chat["max_tokens"]["anyOf"] if b.get("type") == "integer"] == [300]
    assert chat["n"]["maximum"] == 3
    strategies = next(b for b in c["AdaptationCreate"]["properties"]["strategy"]["anyOf"] if b.get("type") == "string")
    assert "passage" in strategies["enum"] and "custom" in strategies["enum"]
    modules = next(b for b in c["LoraIn"]["properties"]["target_modules"]["anyOf"] if b.get("type") == "array")
    assert modules["items"]["minLength"] == 1 and modules["items"]["maxLength"] == 200
    # ... and they are the server's: one more document than documented is refused.
    docs = [{"text": f"doc {i}"} for i in range(6)]
    r = client.post("/v1/adaptations", headers=h, json={"documents": docs})
    assert r.status_code == 422 and r.json()["error"]["param"] == "documents"
    r = client.post("/v1/adaptations", headers=h, json={"documents": [{"text": "x"}], "lora": {"target_modules": [""]}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "lora.target_modules.0"


def test_document_items_say_text_or_id(ctx):
    client, _, _ = ctx
    item = client.get("/openapi.json").json()["components"]["schemas"]["DocumentItem"]
    required = [b.get("required") for b in item["oneOf"]]
    assert ["id"] in required and ["text"] in required and any(b["type"] == "string" for b in item["oneOf"])


@pytest.mark.parametrize("path,admin", [("/v1/adaptations", False), ("/v1/admin/jobs", True)])
def test_unknown_status_filter_is_422_listing_the_statuses(ctx, path, admin):
    client, h, ha = ctx
    headers = ha if admin else h
    r = client.get(path, headers=headers, params={"status": "bogus"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == "status"
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert status in r.json()["error"]["message"]
    assert client.get(path, headers=headers, params={"status": "queued"}).status_code == 200
    params = next(op for _, lbl, op in _ops(client) if lbl == f"GET {path}")["parameters"]
    status_schema = next(p for p in params if p["name"] == "status")["schema"]
    assert status_schema["enum"] == ["queued", "running", "succeeded", "failed", "cancelled"]


def test_optional_query_parameters_have_no_null_branch(ctx):
    """A query string cannot carry a null (leaving the parameter out says "none"): the documented
    schema of every optional query parameter is its one real type, limits kept."""
    client, _, ha = ctx
    seen = {}
    for _, label, op in _ops(client):
        for param in op.get("parameters", []):
            if param["in"] == "query":
                assert "null" not in repr(param["schema"]), (label, param)
                seen[(label, param["name"])] = param["schema"]
    assert seen[("GET /v1/admin/keys", "tenant")] == {"type": "string", "minLength": 1, "maxLength": 64,
                                                       "title": "Tenant"}
    assert seen[("GET /v1/admin/rl-runs/{run_id}/samples", "iteration")]["minimum"] == 0
    assert client.get("/v1/admin/keys", headers=ha).status_code == 200
    assert client.get("/v1/admin/keys", headers=ha, params={"tenant": "acme"}).json()["data"]


def test_405_allow_lists_every_method_of_the_path(ctx):
    client, h, _ = ctx
    r = client.request("PUT", "/v1/adaptations", headers=h)
    assert r.status_code == 405
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}
    r = client.request("PATCH", "/v1/adapters/adp_x", headers=h)
    assert r.status_code == 405 and {"GET", "DELETE"} <= {m.strip() for m in r.headers["allow"].split(",")}
    assert r.json()["error"]["code"] == "method_not_allowed"
