"""Overload and fair use: a bounded admission queue for generation, per-tenant rate limits.

- **Admission** (per API process): at most ``max_active_generations`` chat/completion requests
  generate at once; up to ``generation_queue_size`` more wait, each at most
  ``generation_queue_wait_s``; past that the answer is 503 with ``Retry-After``, at once (a
  full queue never makes a client hang).
- **Per-tenant limits**: requests per minute (every authenticated route), generation tokens
  per minute (what a request may generate, ``n`` x ``max_tokens`` x prompts, charged by the
  route once it has settled max_tokens, as OpenAI's limiter estimates), and adaptation jobs queued or running at once; 429
  with ``Retry-After`` past them. 0 turns a limit off. The counters live in this process: with
  several API processes behind a balancer, each enforces the limits on what it receives.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError

from api.errors import APIError, error_body
from seal_service.settings import Settings


def too_many(message: str, retry_after_s: float, code: str = "rate_limit_exceeded") -> APIError:
    return APIError(429, message, code=code, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


def overloaded(message: str, retry_after_s: float) -> APIError:
    return APIError(503, message, code="overloaded", headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class TokenBuckets:
    """One bucket per key holding up to ``per_minute`` units, refilled continuously (``per_minute`` / 60 s)."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (units left, when)
        self._lock = threading.Lock()  # charged from the event loop and from the threadpool

    def take(self, key: str, cost: float) -> float:
        """Charge ``cost`` units to ``key``: 0.0 when they were there, else the seconds until they are
        (nothing is charged then). A cost above the bucket's size waits for a full bucket."""
        if self.per_minute <= 0:
            return 0.0
        rate, cost = self.per_minute / 60.0, min(cost, self.per_minute)
        now = time.monotonic()
        with self._lock:
            left, when = self._buckets.get(key, (float(self.per_minute), now))
            left = min(float(self.per_minute), left + (now - when) * rate)
            if left < cost:
                self._buckets[key] = (left, now)
                return (cost - left) / rate
            self._buckets[key] = (left - cost, now)
            if len(self._buckets) > 100_000:  # tenants gone quiet are full again: forget them
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}
            return 0.0


class Admission:
    """At most ``max_active`` holders at once, at most ``queue_size`` waiting, each for ``wait_s``."""

    def __init__(self, max_active: int, queue_size: int, wait_s: float) -> None:
        self.max_active, self.queue_size, self.wait_s = max_active, queue_size, wait_s
        self.active = 0
        self.waiting = 0
        self._sem: asyncio.Semaphore | None = None  # made on the serving event loop

    async def acquire(self) -> None:
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.max_active)
        if self._sem.locked() and self.waiting >= self.queue_size:
            raise overloaded(f"the server is busy ({self.active} requests generating, {self.waiting} waiting); "
                             "retry later", self.wait_s / 4)
        self.waiting += 1
        try:
            await asyncio.wait_for(self._sem.acquire(), timeout=self.wait_s)
        except TimeoutError:
            raise overloaded(f"the server stayed busy for {self.wait_s:g} s; retry later", self.wait_s / 4) from None
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        assert self._sem is not None
        self.active -= 1
        self._sem.release()


class Limits:
    """The limits of one API process (``app.state.limits``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.requests = TokenBuckets(settings.tenant_requests_per_min)
        self.tokens = TokenBuckets(settings.tenant_tokens_per_min)
        self.admission = Admission(settings.max_active_generations, settings.generation_queue_size,
                                   settings.generation_queue_wait_s)

    def charge_request(self, tenant_id: str) -> None:
        if wait := self.requests.take(tenant_id, 1):
            raise too_many(f"more than {self.settings.tenant_requests_per_min} requests a minute for this tenant "
                           "(SEAL_TENANT_REQUESTS_PER_MIN)", wait)

    def charge_tokens(self, tenant_id: str, tokens: int) -> None:
        if wait := self.tokens.take(tenant_id, tokens):
            raise too_many(f"more than {self.settings.tenant_tokens_per_min} generated tokens a minute for this "
                           f"tenant (SEAL_TENANT_TOKENS_PER_MIN; this request may generate {tokens})", wait,
                           code="tokens_rate_limit_exceeded")


async def generation_slot(request: Request) -> AsyncIterator[None]:
    """Route dependency of the completion routes: hold an admission slot until the response
    (streamed or not) has been sent. (The routes charge the tenant's token budget with the
    max_tokens they settled on.)"""
    limits: Limits = request.app.state.limits
    await limits.admission.acquire()
    try:
        yield
    finally:
        limits.admission.release()


def install(app: FastAPI) -> None:
    """A request that found no free registry connection in time is told to retry, not given a 500."""

    @app.exception_handler(SQLAlchemyTimeoutError)
    async def _pool_exhausted(_req: Request, _exc: SQLAlchemyTimeoutError) -> JSONResponse:
        settings: Settings = app.state.settings
        return JSONResponse(error_body(503, "the registry is busy (no free database connection); retry later",
                                       code="database_busy"), status_code=503,
                            headers={"Retry-After": str(max(1, math.ceil(settings.db_pool_timeout_s)))})
