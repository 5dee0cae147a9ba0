"""Load on a real `seal serve`: 64 concurrent chat and text completions, streamed and not, over the
base model and 8 adapters, in embedded mode and on Postgres + Redis: no 5xx, every answer well
formed. With a small admission queue the overflow is 503 with Retry-After, never a 500 or a hang.

Few tokens per request (the figures with more are bench/load.py's, in BENCHMARKS.md).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import TEST_DATA_DIR
from tests.support.load import burst, served, summary
from tests.support.service import REDIS_URL, database_for, require_redis

REQUESTS, ADAPTERS, TOKENS = 64, 8, 4
NO_TENANT_LIMITS = {"SEAL_TENANT_REQUESTS_PER_MIN": "0", "SEAL_TENANT_TOKENS_PER_MIN": "0"}


def _check(out: dict, *, only_ok: bool) -> None:
    assert out["requests"] == REQUESTS and out["server_errors"] == 0, out
    assert out["malformed"] == 0 and out["unavailable_without_retry_after"] == 0, out
    if only_ok:
        assert out["statuses"] == {"200": REQUESTS}, out
        assert out["generated_tokens"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["embedded", "postgres_redis"])
def test_64_concurrent_completions_over_base_and_8_adapters(mode) -> None:
    env = dict(NO_TENANT_LIMITS)
    with database_for("sqlite" if mode == "embedded" else "postgres") as url:
        if url is not None:
            env.update(SEAL_DATABASE_URL=url, SEAL_BROKER_URL=require_redis(REDIS_URL))
        with served(str(TEST_DATA_DIR), ADAPTERS, env) as (base, key, models):
            assert len(models) == ADAPTERS + 1
            seconds, rows = asyncio.run(burst(base, key, models, REQUESTS, TOKENS))
    out = summary(seconds, rows)
    _check(out, only_ok=True)
    # Every (kind, streamed) pair and every model was exercised.
    assert {(r["kind"], r["stream"]) for r in rows} == {("chat", False), ("chat", True), ("text", False),
                                                         ("text", True)}
    assert {r["model"] for r in rows} == set(models)


@pytest.mark.slow
def test_overload_is_503_with_retry_after_never_a_500() -> None:
    env = {**NO_TENANT_LIMITS, "SEAL_MAX_ACTIVE_GENERATIONS": "4", "SEAL_GENERATION_QUEUE_SIZE": "4",
           "SEAL_GENERATION_QUEUE_WAIT_S": "0.5"}
    with served(str(TEST_DATA_DIR), 2, env) as (base, key, models):
        seconds, rows = asyncio.run(burst(base, key, models, REQUESTS, 16))
    out = summary(seconds, rows)
    _check(out, only_ok=False)
    assert set(out["statuses"]) == {"200", "503"} and out["statuses"]["503"] >= REQUESTS // 2, out
