"""Registry tables (SQLAlchemy 2 typed models). The schema is created by Alembic (migrations/)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from seal_service.db.base import Base, JSONType, UTCDateTime, utcnow

# Job states. queued -> running -> succeeded | failed | cancelled (running -> queued again
# only through a new delivery after its worker died).
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)

ADAPTER_READY, ADAPTER_DELETED = "ready", "deleted"


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """A key is shown once; only its SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RLRun(Base):
    """A ReST-EM run that trains the self-edit policy (next issue)."""

    __tablename__ = "rl_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="SET NULL"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    base_model: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PolicyCheckpoint(Base):
    """A self-edit policy (an adapter on the generator); at most one promoted per base model."""

    __tablename__ = "policy_checkpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    rl_run_id: Mapped[str | None] = mapped_column(ForeignKey("rl_runs.id", ondelete="SET NULL"), index=True)
    base_model: Mapped[str] = mapped_column(String(200), index=True)
    # The prompt strategy the policy writes self-edits with.
    strategy: Mapped[str] = mapped_column(String(64))
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    storage_path: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    promoted: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RLSample(Base):
    """One self-edit sampled during an RL run, with its reward terms once evaluated."""

    __tablename__ = "rl_samples"
    __table_args__ = (UniqueConstraint("rl_run_id", "iteration", "passage", "sample"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rl_run_id: Mapped[str] = mapped_column(ForeignKey("rl_runs.id", ondelete="CASCADE"), index=True)
    iteration: Mapped[int] = mapped_column(Integer)
    passage: Mapped[int] = mapped_column(Integer)
    sample: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text, default="")
    prompt: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    # The policy checkpoint that wrote it (None: the base model).
    policy_id: Mapped[str | None] = mapped_column(ForeignKey("policy_checkpoints.id", ondelete="SET NULL"))
    seeds: Mapped[list[int] | None] = mapped_column(JSONType)  # inner-loop seeds, one per repeat
    rewards: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)  # reward terms per repeat
    reward: Mapped[float | None] = mapped_column(Float)  # mean over repeats
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RLEvaluation(Base):
    """A finished per-passage evaluation (baselines + every sample's reward): the unit of resume."""

    __tablename__ = "rl_evaluations"

    rl_run_id: Mapped[str] = mapped_column(ForeignKey("rl_runs.id", ondelete="CASCADE"), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True)
    passage: Mapped[int] = mapped_column(Integer, primary_key=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSONType)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class RLWorkLease(Base):
    """Who is doing one unit of an RL iteration: a passage's evaluation (unit >= 0) or the
    run's own step work (unit -1: sampling, policy fine-tuning).

    ``lease_until`` is set while a worker holds the unit and renews it, cleared when it
    lets go; a lease that runs out (or whose holder died) means the work was lost. The
    dispatch and claim times tell the recovery sweep that a message never arrived.
    """

    __tablename__ = "rl_work_leases"

    rl_run_id: Mapped[str] = mapped_column(ForeignKey("rl_runs.id", ondelete="CASCADE"), primary_key=True)
    iteration: Mapped[int] = mapped_column(Integer, primary_key=True)
    unit: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class AdaptationJob(Base):
    __tablename__ = "adaptation_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    base_model: Mapped[str] = mapped_column(String(200))
    strategy: Mapped[str] = mapped_column(String(64))
    template: Mapped[str | None] = mapped_column(Text)
    policy_id: Mapped[str | None] = mapped_column(ForeignKey("policy_checkpoints.id", ondelete="SET NULL"))
    num_self_edits: Mapped[int] = mapped_column(Integer, default=1)
    lora: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    eval_questions: Mapped[list[dict[str, str]] | None] = mapped_column(JSONType)
    seed: Mapped[int | None] = mapped_column(Integer)
    # A few-shot task job (POST /v1/tasks) instead of documents: {"task": {...}, "recipe"?: {...}}.
    task: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    # The request's recipe overrides (seal_engine.config.RecipeSettings fields) and retention bound;
    # None: the worker's settings.
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    max_forgetting: Mapped[float | None] = mapped_column(Float)
    # The adapter this job's adapter is the next version of (trained from it on new documents),
    # and the alias moved to the new version once it is registered.
    parent_id: Mapped[str | None] = mapped_column(String(40))
    alias: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    error: Mapped[str | None] = mapped_column(Text)
    # Machine-readable kind of ``error`` (e.g. "forgetting_exceeded"); see workers.errors.
    error_code: Mapped[str | None] = mapped_column(String(64))
    # Derived from the job id when the job is created; the adapter row exists only once ready.
    adapter_id: Mapped[str] = mapped_column(String(40), unique=True)
    task_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the task message was last sent, and when a worker last took the job: a message
    # sent after the last claim is still on its way, so a lost job is sent again only once.
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    documents: Mapped[list[JobDocument]] = relationship(
        order_by="JobDocument.position", cascade="all, delete-orphan", lazy="selectin"
    )
    self_edits: Mapped[list[SelfEdit]] = relationship(
        order_by="SelfEdit.position", cascade="all, delete-orphan", lazy="selectin"
    )


class JobDocument(Base):
    __tablename__ = "job_documents"

    job_id: Mapped[str] = mapped_column(ForeignKey("adaptation_jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)

    document: Mapped[Document] = relationship(lazy="joined")


class SelfEdit(Base):
    __tablename__ = "self_edits"
    __table_args__ = (UniqueConstraint("job_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("adaptation_jobs.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[str | None] = mapped_column(ForeignKey("documents.id", ondelete="SET NULL"))
    position: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    # Which policy wrote it: the prompt strategy, and the policy checkpoint if one was used.
    strategy: Mapped[str] = mapped_column(String(64))
    policy_id: Mapped[str | None] = mapped_column(ForeignKey("policy_checkpoints.id", ondelete="SET NULL"))
    # Reward terms of the adapter trained on it (adapted accuracy, retention, penalty, reward).
    reward: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Adapter(Base):
    """A registered adapter. Rows are written only once the files are in place (status ready)."""

    __tablename__ = "adapters"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("adaptation_jobs.id", ondelete="SET NULL"), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    base_model: Mapped[str] = mapped_column(String(200))
    storage_path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=ADAPTER_READY, index=True)
    strategy: Mapped[str] = mapped_column(String(64))
    policy_id: Mapped[str | None] = mapped_column(ForeignKey("policy_checkpoints.id", ondelete="SET NULL"))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    lora: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # The version it was trained from (None: from the base model). No foreign key: a deleted
    # version's row stays (status deleted), and its children carry their own weights.
    parent_id: Mapped[str | None] = mapped_column(String(40), index=True)
    # seal_engine.knowledge.lineage.Lineage.to_dict(): documents learned along the chain and
    # the chain's accuracy matrix.
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Alias(Base):
    """A tenant's name for one of its adapters (``model: "<name>"`` in completions); moving it
    to another version is one update."""

    __tablename__ = "aliases"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    adapter_id: Mapped[str] = mapped_column(ForeignKey("adapters.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class WorkerHeartbeat(Base):
    """Live workers (for /readyz): each writes its row every few seconds."""

    __tablename__ = "worker_heartbeats"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(200))
    base_model: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
