"""The end of a job in the database: the adapter registered (with its self-edits), or the job failed."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, update

from seal_service.db.base import utcnow
from seal_service.db.models import ADAPTER_READY, FAILED, RUNNING, SUCCEEDED, AdaptationJob, Adapter, SelfEdit
from seal_service.db.session import session_scope
from seal_service.settings import Settings
from seal_service.storage import JOB_MARKER, RECORD, dir_size
from seal_service.aliases import move_alias
from workers.adaptation.claim import JobSpec
from workers.adaptation.lineage import child_lineage, stored_lineage


@dataclass
class Produced:
    """What a run produced, as it is registered."""

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


def complete_record(path: Path, job_id: str) -> dict[str, Any] | None:
    """The record of a complete adapter directory written for ``job_id``, else None."""
    from seal_engine.core.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    try:
        marker = json.loads((path / JOB_MARKER).read_text())
        if marker.get("job_id") != job_id or not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
            return None
        return json.loads((path / RECORD).read_text())
    except (OSError, ValueError):
        return None


def register(settings: Settings, spec: JobSpec, worker: str, produced: Produced, final: Path) -> bool:
    """The one transaction that makes the adapter exist. False if the job is no longer ours."""
    now = utcnow()
    with session_scope(settings.resolved_database_url) as s:
        # Write first: on SQLite this takes the write lock before anything is read.
        res = s.execute(
            update(AdaptationJob)
            .where(AdaptationJob.id == spec.id, AdaptationJob.status == RUNNING, AdaptationJob.worker == worker)
            .values(status=SUCCEEDED, stage="done", progress=1.0, metrics=produced.metrics, finished_at=now,
                    lease_until=None, error=None, error_code=None, updated_at=now)
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
        row.size_bytes = dir_size(final)
        row.deleted_at = None
        row.parent_id = spec.parent_id
        if spec.task is None:
            parent = s.get(Adapter, spec.parent_id) if spec.parent_id else None
            row.lineage = child_lineage(
                spec.adapter_id, spec.documents, len(spec.eval_questions), produced.metrics, settings.reward_grader,
                stored_lineage(s, parent, settings.reward_grader) if parent is not None else None)
        if spec.alias:
            s.flush()  # the adapter row before the alias that points at it
            move_alias(s, spec.tenant_id, spec.alias, spec.adapter_id)
    return True


def mark_failed(settings: Settings, job_id: str, worker: str, reason: str, code: str,
                metrics: dict[str, Any] | None = None) -> None:
    """The job failed with ``reason`` (``code`` its kind); ``metrics``: what was measured before it did."""
    now = utcnow()
    with session_scope(settings.resolved_database_url) as s:
        s.execute(
            update(AdaptationJob)
            .where(AdaptationJob.id == job_id, AdaptationJob.status == RUNNING, AdaptationJob.worker == worker)
            .values(status=FAILED, stage="failed", error=reason, error_code=code, metrics=metrics, finished_at=now,
                    lease_until=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
