"""Hostile input: schemathesis over the whole /openapi.json, with a tenant key and with an admin key.

The app runs in-process (schemathesis' ASGI transport) with no worker: jobs stay queued, and no
request reaches the real model (a generated ``model`` is never the base model's id), so every answer
comes from validation, auth, lookups and the job machinery. Every built-in check runs: no 5xx,
responses match their documented schema, status codes and headers, valid-per-schema requests are
accepted and invalid ones rejected (positive and negative generation), missing auth is a 401.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hsettings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.config._checks import NegativeDataRejectionConfig

from api.main import create_app
from tests.conftest import TEST_DATA_DIR
from tests.support.service import bearer, new_key, service_settings

# Examples per operation and generation mode (each test below runs every operation: ~40 x 2 keys).
MAX_EXAMPLES = 10

# Valid-per-schema requests the server may still refuse, because what decides is stored state that
# no schema can know: (operation, the field error.param names). Any other refusal of positive data
# fails the suite.
SERVER_STATE = {
    "POST /v1/adaptations": r"documents\.\d+\.id",          # a stored document id that does not exist
    "POST /v1/admin/rl-runs": r"dataset|init_policy_id",    # a file path on the server; a policy id
    "POST /v1/load_lora_adapter": r"lora_path|lora_name",   # an adapter directory on the server
}
# Cross-field rules JSON Schema cannot say (a template needs strategy custom; an ARC grid is
# rectangular, and a task's inputs are all grids or all strings; an RL run takes its data in one of
# three fields, by its kind).
CROSS_FIELD = {
    "POST /v1/adaptations": r"template",
    "POST /v1/tasks": r"train(\.\d+(\.(input|output))?)?|test(\.\d+(\.(input|output))?)?|recipe",
    "POST /v1/tasks/{job_id}/solve": r"inputs\.\d+",
    # fewshot: lr_min <= lr_max and the rates within; body: strategy custom needs a template, a task
    # run has repeats 1.
    "POST /v1/admin/rl-runs": r"documents|tasks|dataset|fewshot|body",
    # The work bound: prompts x n x max_tokens <= SEAL_MAX_REQUEST_TOKENS (the field named is the one given).
    "POST /v1/completions": r"max_tokens|n|prompt",
    "POST /v1/chat/completions": r"max_tokens|max_completion_tokens|n",
}

# Built at import, as schemathesis needs the schema to make one test per operation; the app's
# lifespan (migrations, backend start) runs with the first request, started by schemathesis.
_STATE = Path(tempfile.mkdtemp(prefix="seal-schemathesis-"))
# Rate limits off: this suite sends thousands of requests a minute.
SETTINGS = service_settings(_STATE, TEST_DATA_DIR, tenant_requests_per_min=0, tenant_tokens_per_min=0,
                            tenant_max_active_jobs=0)
APP = create_app(SETTINGS)
schema = schemathesis.openapi.from_dict(APP.openapi())
schema.app = APP
# No NUL characters in "valid" strings: every text field refuses them (PostgreSQL cannot store them),
# which the schema does not say; tests/api/test_bad_input.py sends them on purpose.
schema.config.generation.update(max_examples=MAX_EXAMPLES, modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                allow_x00=False)
# A body over SEAL_MAX_BODY_BYTES is rejected with 413 (documented on every operation with a body).
schema.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
    expected_statuses=[*schema.config.checks.negative_data_rejection.expected_statuses, "413"])

STATUSES: Counter[tuple[str, str, int]] = Counter()  # (key, operation, status) -> answers


def _refused_for_state(case, response) -> bool:
    label = f"{case.method.upper()} {case.path}"
    if response.status_code not in (400, 422):
        return False
    try:
        param = response.json()["error"]["param"] or ""
    except (ValueError, KeyError, TypeError):
        return False
    return any(label in table and re.fullmatch(table[label], param) for table in (SERVER_STATE, CROSS_FIELD))


def positive_data_accepted(ctx, response, case):  # noqa: ANN001, ANN201
    """schemathesis' positive_data_acceptance, but for the refusals listed above."""
    if _refused_for_state(case, response):
        return None
    return positive_data_acceptance(ctx, response, case)


@pytest.fixture(scope="module")
def keys() -> Iterator[dict[str, str]]:
    from seal_service.db.base import utcnow
    from seal_service.db.models import WorkerHeartbeat
    from seal_service.db.session import session_scope

    try:
        tenant = bearer(new_key(SETTINGS, "acme"))["Authorization"]  # migrates the database
        admin = bearer(new_key(SETTINGS, "ops", admin=True))["Authorization"]
        with session_scope(SETTINGS.resolved_database_url) as db:
            # A worker seen "tomorrow", so /readyz answers 200 (its 503 is documented, but is a 5xx).
            db.add(WorkerHeartbeat(id="fuzz-worker", hostname="localhost", pid=1, queue=SETTINGS.task_queue,
                                   base_model=SETTINGS.model_id, last_seen=utcnow() + timedelta(days=1)))
        yield {"tenant": tenant, "admin": admin}
    finally:
        shutil.rmtree(_STATE, ignore_errors=True)


def _call(case, key: str, who: str) -> None:  # noqa: ANN001
    # The generated Authorization header (a random token) becomes the real key; a case that leaves
    # the header out on purpose keeps it out, and must get its 401.
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "authorization":
            headers[name] = key
    response = case.call_and_validate(excluded_checks=[positive_data_acceptance],
                                      additional_checks=[positive_data_accepted])
    STATUSES[(who, f"{case.method.upper()} {case.path}", response.status_code)] += 1


@schema.parametrize()
@hsettings(deadline=None, suppress_health_check=list(HealthCheck))
def test_with_a_tenant_key(case, keys) -> None:
    _call(case, keys["tenant"], "tenant")


@schema.parametrize()
@hsettings(deadline=None, suppress_health_check=list(HealthCheck))
def test_with_an_admin_key(case, keys) -> None:
    _call(case, keys["admin"], "admin")


def test_the_keys_were_used() -> None:
    """The keys got requests past authentication on most operations (else the suite would only
    have fuzzed the 401)."""
    for who in ("tenant", "admin"):
        answers = {(op, code): n for (w, op, code), n in STATUSES.items() if w == who}
        if not answers:
            pytest.skip("run with the schemathesis tests of this module")
        ops = {op for op, _ in answers}
        past_auth = {op for op, code in answers if code not in (401, 403)}
        succeeded = {op for op, code in answers if 200 <= code < 300}
        assert len(past_auth) >= 0.9 * len(ops) if who == "admin" else len(past_auth) >= 0.6 * len(ops), answers
        assert len(succeeded) >= 6, (who, sorted(succeeded))
