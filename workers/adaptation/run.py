"""The adaptation job body: an idempotent state machine over the job row.

A delivery of the task (first, duplicate, or again after its worker died) goes:

1. **claim**: one conditional UPDATE turns ``queued`` (or ``running`` whose lease has
   expired, i.e. whose worker died) into ``running`` for this worker. A job that is
   finished, cancelled, or held by a live worker is left alone.
2. **work** under a lease that a thread renews; progress is written to the row. A
   cancel request or a lost lease stops the work at the next progress report.
3. **publish**: the adapter files are written to a temporary directory and renamed
   into ``{storage}/{tenant}/{adapter_id}`` (the id is derived from the job id).
4. **register**: one transaction that first flips the job to ``succeeded`` (only if
   this worker still holds it) and then upserts the self-edits and the adapter row.

So a SIGKILL anywhere leaves at most an unregistered directory that the next delivery
replaces (or registers, when it is already complete), never a second adapter, and an
adapter row exists only once its files are in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, or_, select, update

from seal_service.db.base import utcnow
from seal_service.db.models import (
    ADAPTER_READY,
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    Adapter,
    AdaptationJob,
    Document,
    JobDocument,
    PolicyCheckpoint,
    SelfEdit,
)
from seal_service.db.session import session_scope
from seal_service.settings import Settings

log = logging.getLogger("seal.worker")

JOB_MARKER = "seal_job.json"
RECORD = "seal_record.json"
MAX_ERROR_CHARS = 2000
_BOOT = uuid.uuid4().hex[:6]


def worker_identity() -> str:
    """host:pid:boot, unique per worker process (the boot nonce survives pid reuse in containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_BOOT}"


def holder_is_dead(holder: str | None) -> bool:
    """True when ``holder`` was a worker process on this host that no longer runs."""
    if not holder:
        return True
    parts = holder.split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False  # another host: only its lease can tell
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if holder == worker_identity():
        return False
    if pid == os.getpid():
        return True  # an earlier process with our pid (container restart)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobCancelled(Exception):
    pass


class LeaseLost(Exception):
    pass


class JobError(Exception):
    """A failure whose message is meant for the user as is."""


def readable(exc: BaseException) -> str:
    """One line a user can act on."""
    from pydantic import ValidationError

    from seal_engine.knowledge.documents import DocumentError
    from seal_engine.fewshot.arc import TaskError
    from seal_engine.fewshot.recipes import RecipeError
    from seal_engine.core.lora import AdapterError
    from seal_engine.core.model import ModelNotFoundError
    from seal_engine.knowledge.prompts import UnknownStrategyError

    if isinstance(exc, ValidationError):
        msg = "invalid settings: " + "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
    elif isinstance(exc, (JobError, DocumentError, AdapterError, ModelNotFoundError, UnknownStrategyError,
                          TaskError, RecipeError)):
        msg = str(exc)
    elif isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        msg = f"out of memory: {exc}"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    msg = " ".join(msg.split())
    return msg[:MAX_ERROR_CHARS] or type(exc).__name__


# --- the job row ---------------------------------------------------------------------------


@dataclass
class JobSpec:
    """Everything the work needs, read once after the claim."""

    id: str
    tenant_id: str
    name: str | None
    base_model: str
    strategy: str
    template: str | None
    policy_id: str | None
    policy_path: str | None
    num_self_edits: int
    lora: dict[str, Any]
    eval_questions: list[dict[str, str]]
    seed: int | None
    adapter_id: str
    attempts: int
    documents: list[tuple[str, str, str]] = field(default_factory=list)  # (id, title, text)
    task: dict[str, Any] | None = None  # a few-shot task job: {"task": {...}, "recipe"?: {...}}


def _claimable(now):  # noqa: ANN001, ANN202
    return or_(
        AdaptationJob.status == QUEUED,
        (AdaptationJob.status == RUNNING) & (or_(AdaptationJob.lease_until.is_(None), AdaptationJob.lease_until < now)),
    )


def claim(settings: Settings, job_id: str, worker: str, *, wait: bool = True) -> JobSpec | None:
    """Take the job for ``worker``; None when there is nothing for this delivery to do.

    A job held by another worker is waited for only while its lease is not renewed: a
    renewal proves that worker alive (this delivery is a duplicate), an expiry that it died.
    """
    url = settings.resolved_database_url
    deadline = time.monotonic() + settings.job_lease_s + 2
    first_lease = None
    while True:
        now = utcnow()
        # Read, then write in a separate transaction (SQLite cannot upgrade a stale read to a write).
        with session_scope(url) as s:
            job = s.get(AdaptationJob, job_id)
            if job is None:
                log.warning("job %s does not exist; dropping the message", job_id)
                return None
            status, holder, lease_until, attempts = job.status, job.worker, job.lease_until, job.attempts
            tenant, adapter_id, started_at = job.tenant_id, job.adapter_id, job.started_at
        if status in TERMINAL:
            if status != SUCCEEDED:
                _remove_unregistered(settings, tenant, adapter_id)
            log.info("job %s is already %s; nothing to do", job_id, status)
            return None
        steal = status == RUNNING and holder_is_dead(holder)
        expired = lease_until is None or lease_until < now
        if attempts >= settings.max_job_attempts and (status == QUEUED or steal or expired):
            with session_scope(url) as s:
                s.execute(
                    update(AdaptationJob).where(AdaptationJob.id == job_id, AdaptationJob.status.in_((QUEUED, RUNNING)))
                    .values(status=FAILED, stage="failed", finished_at=now, lease_until=None, updated_at=now,
                            error=f"the job was started {attempts} times and its worker stopped each time "
                                  "(crash, out of memory or kill); giving up")
                    .execution_options(synchronize_session=False)
                )
            return None
        cond = or_(_claimable(now), AdaptationJob.worker == holder) if steal else _claimable(now)
        with session_scope(url) as s:
            res = s.execute(
                update(AdaptationJob)
                .where(AdaptationJob.id == job_id, AdaptationJob.status.in_((QUEUED, RUNNING)), cond)
                .values(status=RUNNING, worker=worker, lease_until=now + timedelta(seconds=settings.job_lease_s),
                        claimed_at=now, attempts=AdaptationJob.attempts + 1, started_at=started_at or now,
                        stage="starting", error=None, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount == 1:
                s.commit()
                return _spec(s, job_id)
        if first_lease is None:
            first_lease = lease_until
        renewed = lease_until is not None and first_lease is not None and lease_until > first_lease
        if not wait or renewed or time.monotonic() > deadline:
            log.info("job %s is held by %s (alive); leaving it to that worker", job_id, holder)
            return None
        # Held by another worker: if it died its lease runs out soon, unless it renews it first.
        lease_left = (lease_until - now).total_seconds() if lease_until else 0.0
        time.sleep(min(max(lease_left, 0.1), 1.0))


def _spec(s, job_id: str) -> JobSpec:  # noqa: ANN001
    s.expire_all()
    job = s.get(AdaptationJob, job_id)
    docs = s.execute(
        select(Document.id, Document.title, Document.text)
        .join(JobDocument, JobDocument.document_id == Document.id)
        .where(JobDocument.job_id == job_id).order_by(JobDocument.position)
    ).all()
    policy_path = None
    if job.policy_id:
        policy = s.get(PolicyCheckpoint, job.policy_id)
        policy_path = policy.storage_path if policy else None
    return JobSpec(
        id=job.id, tenant_id=job.tenant_id, name=job.name, base_model=job.base_model, strategy=job.strategy,
        template=job.template, policy_id=job.policy_id, policy_path=policy_path, num_self_edits=job.num_self_edits,
        lora=dict(job.lora or {}), eval_questions=list(job.eval_questions or []), seed=job.seed,
        adapter_id=job.adapter_id, attempts=job.attempts, documents=[tuple(d) for d in docs],
        task=dict(job.task) if job.task else None,
    )


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


# Where each engine stage sits in the job's overall progress.
_STAGES = {"self_edits": (0.0, 0.3), "training": (0.3, 0.9), "evaluation": (0.9, 0.98)}
_STAGES_NO_EVAL = {"self_edits": (0.0, 0.3), "training": (0.3, 0.97), "evaluation": (0.97, 0.98)}


# --- storage --------------------------------------------------------------------------------


def adapter_dir(settings: Settings, tenant: str, adapter_id: str) -> Path:
    return settings.resolved_storage_dir / tenant / adapter_id


def _tmp_root(settings: Settings) -> Path:
    return settings.resolved_storage_dir / ".tmp"


def _remove_unregistered(settings: Settings, tenant: str, adapter_id: str) -> None:
    """Drop leftovers of a job that will never register its adapter."""
    url = settings.resolved_database_url
    with session_scope(url) as s:
        registered = s.get(Adapter, adapter_id) is not None
    if not registered:
        shutil.rmtree(adapter_dir(settings, tenant, adapter_id), ignore_errors=True)
    for tmp in _tmp_root(settings).glob(f"{adapter_id}-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, final: Path) -> None:
    """Atomically put ``tmp`` at ``final`` (replacing a leftover from an earlier attempt)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, trash)
        os.rename(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


# --- what a run produced --------------------------------------------------------------------


@dataclass
class Produced:
    strategy: str
    prompts: list[str]
    self_edits: list[str]
    metrics: dict[str, Any]
    lora: dict[str, Any] | None

    @property
    def reward(self) -> dict[str, Any] | None:
        return self.metrics.get("reward")

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Produced:
        return cls(record.get("strategy", ""), list(record.get("prompts", [])), list(record.get("self_edits", [])),
                   dict(record.get("metrics", {})), record.get("lora"))


def _complete_dir(path: Path, job_id: str) -> dict[str, Any] | None:
    """The record of a complete adapter directory written for ``job_id``, else None."""
    from seal_engine.core.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    try:
        marker = json.loads((path / JOB_MARKER).read_text())
        if marker.get("job_id") != job_id or not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
            return None
        return json.loads((path / RECORD).read_text())
    except (OSError, ValueError):
        return None


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def register(settings: Settings, spec: JobSpec, worker: str, produced: Produced, final: Path) -> bool:
    """The one transaction that makes the adapter exist. False if the job is no longer ours."""
    now = utcnow()
    with session_scope(settings.resolved_database_url) as s:
        # Write first: on SQLite this takes the write lock before anything is read.
        res = s.execute(
            update(AdaptationJob)
            .where(AdaptationJob.id == spec.id, AdaptationJob.status == RUNNING, AdaptationJob.worker == worker)
            .values(status=SUCCEEDED, stage="done", progress=1.0, metrics=produced.metrics, finished_at=now,
                    lease_until=None, error=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            s.rollback()
            return False
        s.execute(delete(SelfEdit).where(SelfEdit.job_id == spec.id))
        k = max(spec.num_self_edits, 1)
        for i, text in enumerate(produced.self_edits):
            doc_index = min(i // k, max(len(spec.documents) - 1, 0))  # a task job has no documents: 0
            s.add(SelfEdit(
                job_id=spec.id, document_id=spec.documents[doc_index][0] if spec.documents else None, position=i,
                prompt=produced.prompts[doc_index] if doc_index < len(produced.prompts) else "",
                text=text, strategy=produced.strategy or spec.strategy, policy_id=spec.policy_id,
                reward=produced.reward,
            ))
        row = s.get(Adapter, spec.adapter_id)
        if row is None:
            row = Adapter(id=spec.adapter_id, tenant_id=spec.tenant_id, job_id=spec.id)
            s.add(row)
        row.name = spec.name
        row.base_model = spec.base_model
        row.storage_path = str(final)
        row.status = ADAPTER_READY
        row.strategy = produced.strategy or spec.strategy
        row.policy_id = spec.policy_id
        row.metrics = produced.metrics
        row.lora = spec.lora  # the LoRA settings the job trained with
        row.size_bytes = _dir_size(final)
        row.deleted_at = None
    return True


def mark_failed(settings: Settings, job_id: str, worker: str, reason: str) -> None:
    now = utcnow()
    with session_scope(settings.resolved_database_url) as s:
        s.execute(
            update(AdaptationJob)
            .where(AdaptationJob.id == job_id, AdaptationJob.status == RUNNING, AdaptationJob.worker == worker)
            .values(status=FAILED, stage="failed", error=reason, finished_at=now, lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )


# --- the body -------------------------------------------------------------------------------

AdaptFn = Callable[..., Any]
BundleFn = Callable[[Settings], Any]


def _default_bundle(settings: Settings):  # noqa: ANN202
    from seal_engine.core.model import get_model

    return get_model(settings)


def _default_adapt(*args: Any, **kwargs: Any):  # noqa: ANN202
    from seal_engine.knowledge.adapt import adapt

    return adapt(*args, **kwargs)


def _default_save(result: Any, directory: Path) -> Path:
    from seal_engine.knowledge.adapt import save_result

    return save_result(result, directory)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    import inspect

    if fn is _default_adapt:
        from seal_engine.knowledge.adapt import adapt as fn  # noqa: PLW0127
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def run_adaptation(
    settings: Settings,
    job_id: str,
    *,
    worker: str | None = None,
    adapt_fn: AdaptFn | None = None,
    bundle_fn: BundleFn | None = None,
    save_fn: Callable[[Any, Path], Path] | None = None,
) -> str:
    """Run (or resume, or skip) job ``job_id``. Returns what happened: the final status or "skipped"."""
    worker = worker or worker_identity()
    adapt_fn = adapt_fn or _default_adapt
    bundle_fn = bundle_fn or _default_bundle
    save_fn = save_fn or _default_save
    spec = claim(settings, job_id, worker)
    if spec is None:
        return "skipped"
    log.info("job %s: attempt %d on %s", job_id, spec.attempts, worker)
    final = adapter_dir(settings, spec.tenant_id, spec.adapter_id)
    tmp = _tmp_root(settings) / f"{spec.adapter_id}-{uuid.uuid4().hex[:8]}"
    try:
        with Lease(settings, job_id, worker) as lease:
            record = _complete_dir(final, job_id)
            if record is not None:
                # An earlier attempt published the files and died before registering them.
                log.info("job %s: registering the adapter an earlier attempt left complete", job_id)
                produced = Produced.from_record(record)
            else:
                produced = _work(settings, spec, lease, tmp, final, adapt_fn, bundle_fn, save_fn)
            lease.progress("registering", 0.99, force=True)
            if register(settings, spec, worker, produced, final):
                log.info("job %s: adapter %s ready", job_id, spec.adapter_id)
                return SUCCEEDED
            lease.touch()
            lease.check()
            raise LeaseLost()
    except JobCancelled:
        log.info("job %s cancelled", job_id)
        _cleanup(settings, spec, tmp)
        return CANCELLED
    except LeaseLost:
        log.warning("job %s: lost the lease (another worker took it over)", job_id)
        shutil.rmtree(tmp, ignore_errors=True)
        return "lost"
    except Exception as e:  # everything else is a failed job with a reason
        reason = readable(e)
        log.exception("job %s failed: %s", job_id, reason)
        mark_failed(settings, job_id, worker, reason)
        _cleanup(settings, spec, tmp)
        return FAILED


def _cleanup(settings: Settings, spec: JobSpec, tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    _remove_unregistered(settings, spec.tenant_id, spec.adapter_id)


def _work(settings: Settings, spec: JobSpec, lease: Lease, tmp: Path, final: Path,
          adapt_fn: AdaptFn, bundle_fn: BundleFn, save_fn: Callable[[Any, Path], Path]) -> Produced:
    from seal_engine.knowledge.documents import Document, Question
    from seal_engine.config import LoraSettings

    lease.progress("loading_model", 0.0, force=True)
    bundle = bundle_fn(settings)
    if getattr(bundle, "model_id", spec.base_model) != spec.base_model:
        raise JobError(f"this worker serves {bundle.model_id!r} but the job is for {spec.base_model!r}")
    extra: dict[str, Any] = {}
    if settings.judge.enabled and _accepts(adapt_fn, "judge"):
        # Grade evaluation questions with the LLM judge too (SEAL_JUDGE__BASE_URL / __MODEL).
        from seal_engine.core.grading import LLMJudge

        extra["judge"] = LLMJudge(settings.judge)
    if spec.policy_id is not None:
        # Self-edits (or task recipes) written by a trained policy, an adapter on the generator.
        # A document engine whose adapt() takes no ``policy`` fails the job rather than
        # silently writing self-edits with the base model.
        if spec.task is None and not _accepts(adapt_fn, "policy"):
            raise JobError(f"policy checkpoint {spec.policy_id} cannot be applied by this engine version")
        if not spec.policy_path:
            raise JobError(f"policy checkpoint {spec.policy_id} has no stored weights")
        from seal_engine.core.lora import load_adapter

        extra["policy"] = load_adapter(spec.policy_path)
    if spec.task is not None:
        return _work_task(settings, spec, lease, tmp, final, bundle, extra.get("policy"))
    if not spec.documents:
        raise JobError("the job has no documents (were they deleted?)")
    docs = [Document(text=text, title=title) for _id, title, text in spec.documents]
    questions = [Question(q["question"], q["answer"]) for q in spec.eval_questions] or None
    lora = LoraSettings.model_validate(spec.lora)
    spans = _STAGES if questions else _STAGES_NO_EVAL

    def progress(stage: str, done: int, total: int) -> None:
        lo, hi = spans.get(stage, (0.0, 0.98))
        lease.progress(stage, lo + (hi - lo) * (done / total if total else 1.0))

    lease.progress("self_edits", 0.0, force=True)
    result = adapt_fn(
        bundle, docs, settings, strategy=spec.strategy, template=spec.template, k=spec.num_self_edits,
        lora=lora, questions=questions, seed=spec.seed, progress=progress, **extra,
    )
    return _save_and_publish(spec, lease, tmp, final, result, save_fn, lora.model_dump())


def _save_and_publish(spec: JobSpec, lease: Lease, tmp: Path, final: Path, result: Any,
                      save_fn: Callable[[Any, Path], Path], lora: dict[str, Any]) -> Produced:
    """Write the result's files (with the job marker) to ``tmp``, then rename them to ``final``."""
    lease.check()
    lease.progress("saving", 0.985, force=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    save_fn(result, tmp)
    (tmp / JOB_MARKER).write_text(json.dumps({"job_id": spec.id, "adapter_id": spec.adapter_id,
                                              "tenant_id": spec.tenant_id, "base_model": spec.base_model}))
    _fsync_dir(tmp)
    lease.check()
    publish(tmp, final)
    metrics = json.loads(json.dumps(result.metrics(), default=str))
    return Produced(result.strategy, list(result.prompts), list(result.self_edits), metrics, lora)


def _work_task(settings: Settings, spec: JobSpec, lease: Lease, tmp: Path, final: Path, bundle: Any,
               policy: Any) -> Produced:
    """A few-shot task job: recipe(s) -> test-time training -> (held-out grades) -> files."""
    from seal_engine.fewshot.recipes import Recipe
    from seal_engine.fewshot.adapt import adapt_task, save_task_result
    from seal_engine.fewshot.datasets import task_from_json

    assert spec.task is not None
    task = task_from_json(spec.task["task"])
    recipe = Recipe(**spec.task["recipe"]) if spec.task.get("recipe") else None
    fewshot = settings.fewshot.model_copy(update={"lora": settings.fewshot.lora.model_copy(update=spec.lora)})

    def progress(stage: str, done: int, total: int) -> None:
        lo, hi = _STAGES.get(stage, (0.0, 0.98))
        lease.progress(stage, lo + (hi - lo) * (done / total if total else 1.0))

    lease.progress("self_edits", 0.0, force=True)
    result = adapt_task(bundle, task, fewshot, k=spec.num_self_edits, recipe=recipe, policy=policy,
                        seed=spec.seed or 0, progress=progress)
    return _save_and_publish(spec, lease, tmp, final, result, save_task_result, fewshot.lora.model_dump())
