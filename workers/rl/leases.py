"""Leases on the units of work of an RL iteration, and the sweep that recovers lost ones.

A unit is one passage's evaluation (unit >= 0) or the run's step work (``STEP``:
sampling an iteration, fine-tuning the policy). A worker claims a unit before working
on it and renews the lease while it works, so a duplicate delivery does not redo
work in progress, and a worker that dies is noticed when its lease runs out (or at
once on the same host, where a dead pid is visible). The recovery sweep then sends
``step`` again, which resends only the evaluations that are neither stored nor held.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError

from seal_service.db.base import utcnow
from seal_service.db.models import QUEUED, RUNNING, RLRun, RLWorkLease
from seal_service.db.session import session_scope
from seal_service.queue import STEP
from seal_service.settings import Settings
from workers.identity import holder_is_dead

log = logging.getLogger("seal.worker.rl")


def _key(run_id: str, iteration: int, unit: int) -> Any:
    return and_(RLWorkLease.rl_run_id == run_id, RLWorkLease.iteration == iteration, RLWorkLease.unit == unit)


def claim(settings: Settings, run_id: str, iteration: int, unit: int, worker: str) -> bool:
    """Take the unit if nobody alive holds it (re-entrant for ``worker``)."""
    url = settings.resolved_database_url
    now = utcnow()
    until = now + timedelta(seconds=settings.job_lease_s)
    try:
        with session_scope(url) as s:
            s.add(RLWorkLease(rl_run_id=run_id, iteration=iteration, unit=unit, worker=worker, lease_until=until,
                              claimed_at=now, attempts=1))
        return True
    except IntegrityError:
        pass
    with session_scope(url) as s:
        row = s.get(RLWorkLease, (run_id, iteration, unit))
        if row is None:
            return False
        holder, held_until = row.worker, row.lease_until
    free = held_until is None or held_until < now or holder == worker or holder_is_dead(holder)
    if not free:
        return False
    # Conditional on what we read: of two claimers racing for a lost unit, one wins.
    cond = RLWorkLease.lease_until.is_(None) if held_until is None else RLWorkLease.lease_until == held_until
    with session_scope(url) as s:
        res = s.execute(update(RLWorkLease).where(_key(run_id, iteration, unit), cond)
                        .values(worker=worker, lease_until=until, claimed_at=now, attempts=RLWorkLease.attempts + 1)
                        .execution_options(synchronize_session=False))
        return res.rowcount == 1


def release(settings: Settings, run_id: str, iteration: int, unit: int, worker: str) -> None:
    with session_scope(settings.resolved_database_url) as s:
        s.execute(update(RLWorkLease).where(_key(run_id, iteration, unit), RLWorkLease.worker == worker)
                  .values(lease_until=None).execution_options(synchronize_session=False))


def held_units(settings: Settings, run_id: str, iteration: int) -> set[int]:
    """Units that a live worker holds right now."""
    now = utcnow()
    with session_scope(settings.resolved_database_url) as s:
        rows = s.execute(select(RLWorkLease.unit, RLWorkLease.worker, RLWorkLease.lease_until)
                         .where(RLWorkLease.rl_run_id == run_id, RLWorkLease.iteration == iteration)).all()
    return {u for u, w, until in rows if until is not None and until >= now and not holder_is_dead(w)}


class Held:
    """Holds a claimed unit: a thread renews the lease; leaving lets go of it."""

    def __init__(self, settings: Settings, run_id: str, iteration: int, unit: int, worker: str) -> None:
        self.settings, self.key, self.worker = settings, (run_id, iteration, unit), worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"rl-lease-{run_id}-{iteration}-{unit}", daemon=True)

    def __enter__(self) -> Held:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            release(self.settings, *self.key, self.worker)
        except Exception:  # an unreleased lease only expires later: recovery is delayed, nothing is lost
            log.warning("could not release the lease on %s", self.key, exc_info=True)

    def _renew(self) -> None:
        interval = max(self.settings.job_lease_s / 3.0, 0.2)
        while not self._stop.wait(interval):
            try:
                with session_scope(self.settings.resolved_database_url) as s:
                    s.execute(update(RLWorkLease).where(_key(*self.key), RLWorkLease.worker == self.worker)
                              .values(lease_until=utcnow() + timedelta(seconds=self.settings.job_lease_s))
                              .execution_options(synchronize_session=False))
            except Exception:  # the database may blip; the next renewal tries again
                log.warning("lease renewal for %s failed", self.key, exc_info=True)


def recover(settings: Settings, dispatch: Callable[[str, list[Any]], None]) -> list[str]:
    """Send ``step`` again for every active run whose work was lost; returns their ids.

    Lost means: at the run's current iteration nobody alive holds a unit, and either a
    holder died (its lease ran out, or its pid is gone on this host) or a message sent
    ``requeue_after_s`` ago was never picked up (or, for a run with no unit at all,
    it was created that long ago).
    """
    now = utcnow()
    stale = now - timedelta(seconds=settings.requeue_after_s)
    url = settings.resolved_database_url
    sent: list[str] = []
    with session_scope(url) as s:
        runs = s.execute(select(RLRun.id, RLRun.metrics, RLRun.created_at)
                         .where(RLRun.status.in_((QUEUED, RUNNING)))).all()
    for run_id, metrics, created_at in runs:
        iteration = int((metrics or {}).get("iteration", 0))
        with session_scope(url) as s:
            rows = s.scalars(select(RLWorkLease).where(RLWorkLease.rl_run_id == run_id,
                                                       RLWorkLease.iteration == iteration)).all()
            for r in rows:
                s.expunge(r)
        held = [r for r in rows if r.lease_until is not None]
        if any(r.lease_until >= now and not holder_is_dead(r.worker) for r in held):
            continue  # work in progress
        died = bool(held)
        unclaimed = [r for r in rows if r.dispatched_at is not None
                     and (r.claimed_at is None or r.claimed_at < r.dispatched_at) and r.dispatched_at < stale]
        never = not rows and created_at < stale
        if not (died or unclaimed or never):
            continue
        step_row = next((r for r in rows if r.unit == STEP), None)
        # Take the right to resend (several workers sweep): move the step unit's dispatch time.
        with session_scope(url) as s:
            if step_row is None:
                try:
                    s.add(RLWorkLease(rl_run_id=run_id, iteration=iteration, unit=STEP, dispatched_at=now, attempts=0))
                    s.flush()
                except IntegrityError:
                    continue
            else:
                old = step_row.dispatched_at
                cond = RLWorkLease.dispatched_at.is_(None) if old is None else RLWorkLease.dispatched_at == old
                if s.execute(update(RLWorkLease).where(_key(run_id, iteration, STEP), cond)
                             .values(dispatched_at=now).execution_options(synchronize_session=False)).rowcount != 1:
                    continue
            # The dead holders' leases are over: their units may be claimed again.
            s.execute(update(RLWorkLease).where(RLWorkLease.rl_run_id == run_id, RLWorkLease.iteration == iteration,
                                                or_(RLWorkLease.lease_until < now,
                                                    RLWorkLease.worker.in_([r.worker for r in held] or [""])))
                      .values(lease_until=None).execution_options(synchronize_session=False))
        try:
            dispatch("step", [run_id])
        except Exception:
            log.warning("could not re-send rl run %s", run_id, exc_info=True)
            continue
        log.info("re-sent rl run %s (iteration %s: %s)", run_id, iteration,
                 "a worker died" if died else "a message was not picked up")
        sent.append(run_id)
    return sent
