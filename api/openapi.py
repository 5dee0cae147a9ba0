"""The OpenAPI document and the pages that show it.

- **Error responses**, added to every operation from what its route depends on (auth, admin,
  path ids, a body) plus a short table of route-specific conflicts, all with the error body of
  :mod:`api.errors` (``{"error": {message, type, param, code}}``; 422 adds ``detail``), and
  ``Retry-After`` on 429 and 503.
- **The server's limits** (``SEAL_MAX_*``, the base model id, the strategy names) written into
  the request schemas, so a request valid per ``/openapi.json`` is one this server accepts.
- **Optional query parameters without a null branch** (a query string cannot carry one).
- **Swagger UI at /docs and ReDoc at /redoc from this process** (the assets of the
  ``fastapi-offline`` package), so the pages work on a machine without internet access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic.json_schema import models_json_schema

from api.deps import current_principal, require_admin
from api.errors import ErrorResponse, ValidationErrorResponse, api_routes
from seal_service.settings import Settings

DOCS_ASSETS = "/docs-assets"

_DESCRIPTIONS = {
    "400": "The request cannot be served as given (e.g. the prompt and max_tokens exceed the model's context, "
           "or a LoRA name/path is refused)",
    "401": "Missing or invalid API key (`Authorization: Bearer <key>`)",
    "403": "This endpoint needs an admin key",
    "404": "No such object for this tenant (another tenant's objects are 404 too), or no such model",
    "409": "The object's state does not allow this (e.g. the job has already finished)",
    "413": "The request body is larger than SEAL_MAX_BODY_BYTES",
    "422": "Invalid request: `error.param` names the field (null when the body is not JSON), "
           "`detail` lists every issue",
    "429": "A per-tenant limit was reached (requests or generated tokens per minute, jobs queued or running); "
           "retry after `Retry-After` seconds",
    "502": "The generation server (SEAL_GENERATION_BACKEND=vllm) failed",
    "503": "Overloaded or a dependency is unavailable (generation queue full, no free database connection, "
           "job queue down, model not loadable); retry after `Retry-After` seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer", "minimum": 1}}}

_GENERATION = {"400", "404", "502", "503"}
# Route-specific errors the generic rules (auth, admin, ids, body) cannot see: (method, path) -> codes.
_EXTRA: dict[tuple[str, str], set[str]] = {
    ("POST", "/v1/chat/completions"): _GENERATION,
    ("POST", "/v1/completions"): _GENERATION,
    ("POST", "/v1/adaptations"): {"404", "503"},  # 404: an unknown parent adapter or alias
    ("DELETE", "/v1/adapters/{adapter_id}"): {"409"},  # an alias points at it
    ("POST", "/v1/tasks"): {"503"},
    ("POST", "/v1/adaptations/{job_id}/cancel"): {"409"},
    ("POST", "/v1/tasks/{job_id}/cancel"): {"409"},
    ("POST", "/v1/tasks/{job_id}/solve"): {"409", "503"},
    ("POST", "/v1/admin/policies/{checkpoint}/promote"): {"409"},
    ("POST", "/v1/admin/rl-runs"): {"503"},
    ("POST", "/v1/admin/rl-runs/{run_id}/resume"): {"409", "503"},
    ("POST", "/v1/load_lora_adapter"): {"400", "502", "503"},
    ("POST", "/v1/unload_lora_adapter"): {"404", "503"},
    ("GET", "/readyz"): {"503"},
    ("DELETE", "/v1/admin/keys/{key_id}"): {"409"},  # an admin revoking the key it calls with
}


def _calls(dependant: Dependant) -> set[Any]:
    found = {dependant.call} if dependant.call is not None else set()
    for sub in dependant.dependencies:
        found |= _calls(sub)
    return found


def error_codes(route: Any, method: str) -> set[str]:
    """The error statuses ``route`` can answer with, from its dependencies and the table above."""
    calls = _calls(route.dependant)
    codes: set[str] = set(_EXTRA.get((method, route.path_format), set()))
    if current_principal in calls:
        # Every authenticated request is charged to its tenant's rate limit and looks its key up.
        codes |= {"401", "429", "503"}
    if require_admin in calls:
        codes.add("403")
    if route.dependant.path_params:
        codes.add("404")
    if route.dependant.body_params:
        codes |= {"413", "422"}
    if route.dependant.query_params or route.dependant.path_params:
        codes.add("422")
    return codes


def _error_components() -> dict[str, Any]:
    _, defs = models_json_schema([(ErrorResponse, "serialization"), (ValidationErrorResponse, "serialization")],
                                 ref_template="#/components/schemas/{model}")
    return defs.get("$defs", {})


def _error_response(code: str) -> dict[str, Any]:
    model = "ValidationErrorResponse" if code == "422" else "ErrorResponse"
    response: dict[str, Any] = {"description": _DESCRIPTIONS[code],
                                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}
    if code in ("429", "503"):
        response["headers"] = dict(_RETRY_AFTER)
    return response


_READINESS = {"type": "object", "required": ["status", "checks"],
              "properties": {"status": {"type": "string", "enum": ["ready", "unavailable"]},
                             "checks": {"type": "object", "additionalProperties": {"type": "object"}}}}


def add_error_responses(app: FastAPI, schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(_error_components())
    for route in api_routes(app):
        if not route.include_in_schema:
            continue
        for method in route.methods:
            operation = schema.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            for code in sorted(error_codes(route, method)):
                if code == "503" and route.path_format == "/readyz":
                    responses[code] = {"description": "Not ready: the failing checks say why",
                                       "content": {"application/json": {"schema": _READINESS}}}
                elif code == "422" or code not in responses:
                    # FastAPI's own 422 documents its {"detail"} body, not the one this API sends.
                    responses[code] = _error_response(code)
    if "/readyz" in schema.get("paths", {}):
        ok = schema["paths"]["/readyz"]["get"]["responses"].get("200", {})
        ok["content"] = {"application/json": {"schema": _READINESS}}
    text = repr(schema["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if f"/{name}'" not in text:
            components.pop(name, None)


# --- the server's limits in the request schemas ---------------------------------------------


def _branches(prop: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The parts of a property schema of JSON type ``kind`` (the property, or its anyOf branches)."""
    options = prop.get("anyOf", [prop])
    return [o for o in options if o.get("type") == kind]


def _tighten(target: dict[str, Any], keywords: dict[str, int]) -> None:
    for keyword, value in keywords.items():
        old = target.get(keyword, value)
        target[keyword] = min(old, value) if keyword.startswith("max") else max(old, value)


def _cap(schema: dict[str, Any], model: str, field: str, kind: str, keyword: str | None = None,
         value: int | None = None, *, items: dict[str, int] | None = None, **keywords: int) -> None:
    """Tighten ``field`` of ``model`` (its ``kind`` branches): ``keyword`` to ``value`` and/or
    ``keywords``, and ``items`` on its array items."""
    prop = schema.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {}).get(field)
    if prop is None:
        return
    if keyword is not None and value is not None:
        keywords[keyword] = value
    for branch in _branches(prop, kind):
        _tighten(branch, keywords)
        if items and isinstance(branch.get("items"), dict):
            _tighten(branch["items"], items)


def _enum(schema: dict[str, Any], model: str, field: str, values: list[str]) -> None:
    prop = schema.get("components", {}).get("schemas", {}).get(model, {}).get("properties", {}).get(field)
    if prop is None:
        return
    for branch in _branches(prop, "string"):
        for keyword in ("minLength", "maxLength", "pattern"):
            branch.pop(keyword, None)
        branch["enum"] = list(values)


def add_server_limits(schema: dict[str, Any], settings: Settings) -> None:
    from seal_engine.knowledge.prompts import CUSTOM, STRATEGY_NAMES

    _cap(schema, "AdaptationCreate", "documents", "array", "maxItems", settings.max_documents)
    _cap(schema, "AdaptationCreate", "num_self_edits", "integer", "maximum", settings.max_self_edits)
    _cap(schema, "AdaptationCreate", "eval_questions", "array", "maxItems", settings.max_eval_questions)
    _enum(schema, "AdaptationCreate", "base_model", [settings.model_id])
    _enum(schema, "AdaptationCreate", "strategy", [*STRATEGY_NAMES, CUSTOM])
    # RL trains a self-edit writer: the passage-only baseline writes none.
    _enum(schema, "RLRunCreate", "strategy", [*(n for n in STRATEGY_NAMES if n != "passage"), CUSTOM])
    _cap(schema, "DocumentIn", "text", "string", "maxLength", settings.max_document_chars)
    components = schema.get("components", {}).get("schemas", {})
    for branch in components.get("DocumentItem", {}).get("oneOf", []):
        if "text" in branch.get("properties", {}):
            _tighten(branch["properties"]["text"], {"maxLength": settings.max_document_chars})
    # What FewShotSettings' validators check (the engine's settings, embedded in RL-run requests).
    from seal_engine.fewshot.augment import GEOMETRIC_OPS

    fewshot = components.get("FewShotSettings", {}).get("properties", {})
    for field, values in (("leave_out", [1, 2, 3]), ("inference_transforms", list(GEOMETRIC_OPS))):
        if fewshot.get(field, {}).get("type") == "array":
            fewshot[field]["minItems"] = max(1, fewshot[field].get("minItems", 1))
            fewshot[field]["items"] = {**fewshot[field].get("items", {}), "enum": values}
    for model in ("ChatCompletionIn", "CompletionIn"):
        for field in ("max_tokens", "max_completion_tokens"):
            _cap(schema, model, field, "integer", "maximum", settings.max_completion_tokens)
        _cap(schema, model, "n", "integer", "maximum", settings.max_choices)
        # What the stop validator checks: at most 4 sequences of 1-200 characters.
        _cap(schema, model, "stop", "string", minLength=1, maxLength=200)
        _cap(schema, model, "stop", "array", maxItems=4, items={"minLength": 1, "maxLength": 200})
    # What the prompt validator checks (1-64 non-empty prompts). The server takes prompts x n up to
    # max_batch_size x max_choices; with n <= max_choices, max_batch_size prompts always fit.
    _cap(schema, "CompletionIn", "prompt", "string", minLength=1)
    _cap(schema, "CompletionIn", "prompt", "array", minItems=1, maxItems=min(64, settings.max_batch_size),
         items={"minLength": 1})


# --- pages --------------------------------------------------------------------------------


def _assets_dir() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, every asset served by this app (create the app
    with ``docs_url=None, redoc_url=None``)."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=_assets_dir()), name="docs-assets")

    def root(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = root(request)
        return get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{base}/docs/oauth2-redirect",
            swagger_js_url=f"{base}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{base}{DOCS_ASSETS}/favicon.png",
            # No online validator badge (it would send the document to validator.swagger.io).
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = root(request)
        return get_redoc_html(openapi_url=f"{base}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{base}{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{base}{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


def drop_null_from_query(schema: dict[str, Any]) -> None:
    """An optional query parameter documented as ``anyOf: [X, null]`` becomes ``X``.

    A query string cannot carry a null: leaving the parameter out is how a client says "none".
    The null branch FastAPI writes for ``str | None = None`` made clients and fuzzers send the text
    ``null`` or an empty object (which serializes to nothing: a valid request read as invalid data).
    """
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for param in operation.get("parameters", []) if isinstance(operation, dict) else []:
                inner = param.get("schema", {})
                branches = inner.get("anyOf")
                if param.get("in") != "query" or param.get("required") or not branches:
                    continue
                kept = [b for b in branches if b.get("type") != "null"]
                if len(kept) == 1 and len(kept) < len(branches):
                    param["schema"] = {**{k: v for k, v in inner.items() if k != "anyOf"}, **kept[0]}


def install(app: FastAPI, settings: Settings) -> None:
    """The docs pages, and ``app.openapi`` post-processed once (call after every router is included)."""
    install_docs(app)
    build = app.openapi
    done: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not done:
            schema = build()
            add_error_responses(app, schema)
            add_server_limits(schema, settings)
            drop_null_from_query(schema)
            app.openapi_schema = schema
            done.append(schema)
        return done[0]

    app.openapi = openapi  # type: ignore[method-assign]
