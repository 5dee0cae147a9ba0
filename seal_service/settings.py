"""Service settings: the engine settings plus what the API and the workers need.

One ``Settings`` object per process, read from ``SEAL_*`` environment variables
(nested sections with ``__``, e.g. ``SEAL_LORA__RANK``). Every field is listed in
SERVICE.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from seal_engine.config import EngineSettings

EMBEDDED_BROKER_FILE = "broker.db"
# seal_engine.knowledge.adapt.MAX_SELF_EDITS (not imported: that module loads torch).
MAX_SELF_EDITS = 64


class Settings(EngineSettings):
    # --- state -----------------------------------------------------------------------------
    # Where the embedded database, the embedded broker and (by default) adapters live.
    # Empty: the engine's data_dir.
    state_dir: Path | None = None
    # SQLAlchemy URL of the registry. Empty: SQLite file ``{state_dir}/seal.db``.
    database_url: str | None = None
    # Celery broker. Empty: embedded mode (a SQLite file ``{state_dir}/broker.db``, no server).
    broker_url: str | None = None
    # Where adapter files are written (PEFT format). Empty: ``{state_dir}/adapters``.
    storage_dir: Path | None = None
    # Run ``alembic upgrade head`` when the API starts.
    auto_migrate: bool = True

    # --- API ---------------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    # Requests with a larger body answer 413.
    max_body_bytes: int = Field(1_000_000, ge=1024)
    # Load the base model in the background when the API starts (else at the first completion).
    api_preload_model: bool = True
    # Loaded adapters kept in memory per API process (LRU).
    adapter_cache_size: int = Field(8, ge=1, le=1024)
    # Largest num_self_edits a job may ask for.
    max_self_edits: int = Field(16, ge=1, le=MAX_SELF_EDITS)
    max_documents: int = Field(16, ge=1, le=1024)
    max_document_chars: int = Field(50_000, ge=1)
    max_eval_questions: int = Field(64, ge=0)
    # Completions: largest max_tokens and n a request may ask for.
    max_completion_tokens: int = Field(512, ge=1)
    max_choices: int = Field(8, ge=1, le=128)
    # Most tokens one completion request may ask to generate: prompts x n x max_tokens (one full
    # batch of max_completion_tokens by default).
    max_request_tokens: int = Field(16384, ge=1)
    # Most rows (choices) decoded together; further requests wait for a row to finish.
    max_batch_size: int = Field(32, ge=1, le=1024)
    # How often the job events stream (SSE) looks at the job.
    events_poll_s: float = Field(0.5, gt=0.0, le=60.0)
    # max_tokens when a completion request gives none.
    default_max_tokens: int = Field(256, ge=1)
    # Send a keep-alive comment on the events stream this often.
    events_ping_s: float = Field(15.0, gt=0.0)

    # --- overload and fair use (api/limits.py) -------------------------------------------------
    # Completion requests generating at once per API process; more wait in a queue of this size,
    # each at most this long, and past that get 503 with Retry-After.
    max_active_generations: int = Field(64, ge=1, le=100_000)
    generation_queue_size: int = Field(256, ge=0, le=1_000_000)
    generation_queue_wait_s: float = Field(30.0, gt=0.0, le=3600.0)
    # Per tenant (0: no limit), 429 with Retry-After past them: requests a minute on any route,
    # tokens a minute a completion request may generate (n x max_tokens x prompts), and
    # adaptation/task jobs queued or running at once.
    tenant_requests_per_min: int = Field(600, ge=0)
    tenant_tokens_per_min: int = Field(200_000, ge=0)
    tenant_max_active_jobs: int = Field(16, ge=0)
    # Registry connections per process (Postgres): the pool, its overflow, and how long a request
    # waits for a free connection before a 503.
    db_pool_size: int = Field(10, ge=1, le=1000)
    db_max_overflow: int = Field(20, ge=0, le=1000)
    db_pool_timeout_s: float = Field(10.0, gt=0.0, le=600.0)

    # --- generation backend ------------------------------------------------------------------
    # Where /v1/completions and /v1/chat/completions generate: "local" (the model in this
    # process) or "vllm" (forwarded to a vLLM OpenAI-compatible server started with LoRA enabled).
    generation_backend: Literal["local", "vllm"] = "local"
    # The vLLM server's OpenAI base URL, e.g. http://vllm:8000/v1 ("/v1" is added if missing).
    vllm_base_url: str | None = None
    # The key the vLLM server was started with (--api-key); empty: none.
    vllm_api_key: str | None = None
    # The base model's name on the vLLM server (its --served-model-name); empty: model_id.
    vllm_model: str | None = None
    # Where the vLLM server sees storage_dir (adapter paths are rewritten); empty: the same path.
    vllm_storage_dir: Path | None = None
    # Seconds to connect to the vLLM server, and to wait for its answer (or the next streamed chunk).
    vllm_connect_timeout_s: float = Field(5.0, gt=0.0, le=600.0)
    vllm_timeout_s: float = Field(300.0, gt=0.0, le=86_400.0)
    # Retries of a request that could not reach the server (connection errors, 5xx), with backoff.
    vllm_max_retries: int = Field(1, ge=0, le=10)

    # --- workers and queue -------------------------------------------------------------------
    task_queue: str = "seal"
    # Redis: an unacknowledged message (its worker died) is delivered again after this long.
    # Keep it above the longest job; leases make a duplicate delivery harmless anyway.
    visibility_timeout_s: int = Field(3600, ge=1)
    # Redis: how often a worker looks for such messages.
    restore_interval_s: int = Field(10, ge=1)
    # A running job holds a lease that its worker renews; an expired lease means the worker died.
    job_lease_s: float = Field(60.0, ge=1.0)
    # Workers write a heartbeat this often; /readyz wants one newer than 3 intervals.
    worker_heartbeat_s: float = Field(10.0, ge=0.2)
    # A worker whose last heartbeat is older than this is shown `lost` in /v1/admin/workers and no
    # longer counts for /readyz. Empty: 3 heartbeat periods.
    worker_lost_after_s: float | None = Field(None, gt=0.0)
    # Heartbeat rows of lost workers are deleted after this long.
    worker_prune_after_s: float = Field(3600.0, ge=60.0)
    # Workers re-dispatch jobs whose worker died (expired lease) or whose message was lost this often.
    recovery_interval_s: float = Field(30.0, ge=0.5)
    # A queued job with no worker for this long is dispatched again (lost message).
    requeue_after_s: float = Field(900.0, ge=1.0)
    # A job whose worker died this many times is failed instead of started again.
    max_job_attempts: int = Field(3, ge=1, le=100)
    # Load the model when the worker starts rather than at its first job.
    worker_preload_model: bool = True

    @field_validator("state_dir", "storage_dir", "database_url", "broker_url", "vllm_base_url", "vllm_api_key",
                     "vllm_model", "vllm_storage_dir", mode="before")
    @classmethod
    def _blank_is_none(cls, v: object) -> object:
        return None if v in ("", None) else v

    @model_validator(mode="after")
    def _lost_before_pruned(self) -> Settings:
        if self.worker_prune_after_s <= self.resolved_worker_lost_after_s:
            raise ValueError("SEAL_WORKER_PRUNE_AFTER_S must exceed SEAL_WORKER_LOST_AFTER_S "
                             "(default 3 x SEAL_WORKER_HEARTBEAT_S)")
        return self

    @model_validator(mode="after")
    def _vllm_needs_a_server(self) -> Settings:
        if self.generation_backend == "vllm" and not self.vllm_base_url:
            raise ValueError("SEAL_GENERATION_BACKEND=vllm needs SEAL_VLLM_BASE_URL (e.g. http://vllm:8000/v1)")
        return self

    # --- derived -----------------------------------------------------------------------------
    @property
    def resolved_worker_lost_after_s(self) -> float:
        return self.worker_lost_after_s or 3 * self.worker_heartbeat_s

    @property
    def resolved_state_dir(self) -> Path:
        return Path(self.state_dir) if self.state_dir else Path(self.data_dir)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_state_dir / 'seal.db'}"

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.resolved_state_dir / EMBEDDED_BROKER_FILE}"

    @property
    def resolved_storage_dir(self) -> Path:
        return Path(self.storage_dir) if self.storage_dir else self.resolved_state_dir / "adapters"

    @property
    def resolved_vllm_base_url(self) -> str:
        url = (self.vllm_base_url or "").rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    @property
    def resolved_vllm_model(self) -> str:
        return self.vllm_model or self.model_id

    def ensure_dirs(self) -> None:
        self.resolved_state_dir.mkdir(parents=True, exist_ok=True)
        self.resolved_storage_dir.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings (from the environment)."""
    return Settings()
