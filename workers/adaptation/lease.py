"""A worker's hold on a running adaptation job: renewed by a thread, and the channel for progress."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from seal_service.db.base import utcnow
from seal_service.db.models import CANCELLED, RUNNING, AdaptationJob
from seal_service.db.session import session_scope
from seal_service.settings import Settings
from workers.errors import JobCancelled, LeaseLost

log = logging.getLogger("seal.worker")

# Where each engine stage sits in the job's overall progress.
# Stages run in this order; "lineage" (the chain's questions, graded before the general gate) sits
# before "forgetting" so the fraction never goes back.
STAGES = {"self_edits": (0.0, 0.25), "training": (0.25, 0.7), "lineage": (0.7, 0.75), "forgetting": (0.75, 0.85),
          "relevance": (0.85, 0.88), "evaluation": (0.88, 0.98)}
STAGES_NO_EVAL = {"self_edits": (0.0, 0.25), "training": (0.25, 0.85), "forgetting": (0.85, 0.95),
                  "relevance": (0.95, 0.97), "evaluation": (0.97, 0.98)}


class Lease:
    """Renews this worker's hold on the job and reports progress; notices cancel and loss."""

    def __init__(self, settings: Settings, job_id: str, worker: str) -> None:
        self.url = settings.resolved_database_url
        self.job_id = job_id
        self.worker = worker
        self.lease_s = settings.job_lease_s
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)
        self._last_write = 0.0
        self._last_stage: str | None = None

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = max(self.lease_s / 3.0, 0.2)
        while not self._stop.wait(interval):
            try:
                self.touch()
            except Exception:  # the database may blip; the next renewal tries again
                log.warning("lease renewal for %s failed", self.job_id, exc_info=True)

    def touch(self, **values: Any) -> bool:
        """Extend the lease (and write ``values``) if the job is still ours and running."""
        now = utcnow()
        with session_scope(self.url) as s:
            res = s.execute(
                update(AdaptationJob)
                .where(AdaptationJob.id == self.job_id, AdaptationJob.status == RUNNING,
                       AdaptationJob.worker == self.worker)
                .values(lease_until=now + timedelta(seconds=self.lease_s), updated_at=now, **values)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                return True
            status = s.scalar(select(AdaptationJob.status).where(AdaptationJob.id == self.job_id))
        (self.cancelled if status == CANCELLED else self.lost).set()
        return False

    def check(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled()
        if self.lost.is_set():
            raise LeaseLost()

    def progress(self, stage: str, fraction: float, *, force: bool = False) -> None:
        self.check()
        now = time.monotonic()
        if force or stage != self._last_stage or now - self._last_write >= 0.5:
            self._last_write = now
            self._last_stage = stage
            self.touch(stage=stage, progress=round(min(max(fraction, 0.0), 1.0), 4))
            self.check()

    def engine_progress(self, spans: dict[str, tuple[float, float]]) -> Callable[[str, int, int], None]:
        """The engine's ``progress(stage, done, total)`` callback, placed within each stage's span."""

        def progress(stage: str, done: int, total: int) -> None:
            lo, hi = spans.get(stage, (0.0, 0.98))
            self.progress(stage, lo + (hi - lo) * (done / total if total else 1.0))

        return progress
