"""A version's place in its chain: what a job reads of its parent, and the lineage it registers.

An adapter's lineage (the ``adapters.lineage`` column, ``lineage`` in the API) is self-contained,
so deleting a version never breaks its children:

    {"parent_id": "adp_..." | None,
     "versions": [{"adapter_id", "documents": [document ids], "questions": n, "accuracy": x | None}, ...],
     "documents": [{"id", "title", "adapter_id"}, ...],
     "matrix": [[a00], [a10, a11], ...]}

``versions`` runs from the root to this adapter; ``accuracy`` is a version's grade on its own
questions right after its own training (None: it was given none); ``matrix[i][j]`` is version
i's grade on version j's questions (j <= i), the chain's forgetting matrix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from seal_service.db.models import ADAPTER_READY, AdaptationJob, Adapter, JobDocument
from seal_service.storage import RECORD
from workers.errors import JobError


@dataclass
class ParentSpec:
    """The parent version as the job reads it once claimed."""

    id: str
    path: str
    lineage: dict[str, Any]
    questions: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # version id -> its questions


def _own_accuracy(metrics: dict[str, Any] | None, grader: str) -> float | None:
    """A version's grade on its own questions: the chain's (chat path) measure, else (an adapter made
    before lineages existed) its evaluation's."""
    own = ((metrics or {}).get("chain") or {}).get("own")
    if own is not None:
        return float(own)
    acc = (metrics or {}).get("adapted_accuracy") or {}
    value = acc.get(grader, acc.get("contains"))
    return float(value) if value is not None else None


def root_lineage(adapter_id: str, documents: list[dict[str, str]], questions: int, accuracy: float | None,
                 parent: dict[str, Any] | None = None, row: list[float | None] | None = None) -> dict[str, Any]:
    """The lineage of ``adapter_id``: ``parent``'s (None: a root) extended by this version."""
    versions = list((parent or {}).get("versions", []))
    matrix = [list(r) for r in (parent or {}).get("matrix", [])]
    docs = list((parent or {}).get("documents", []))
    versions.append({"adapter_id": adapter_id, "documents": [d["id"] for d in documents], "questions": questions,
                     "accuracy": accuracy})
    matrix.append(list(row or [])[: len(versions) - 1] + [accuracy])
    docs.extend({"id": d["id"], "title": d.get("title", ""), "adapter_id": adapter_id} for d in documents)
    return {"parent_id": versions[-2]["adapter_id"] if len(versions) > 1 else None,
            "versions": versions, "documents": docs, "matrix": matrix}


def stored_lineage(s: Session, row: Adapter, grader: str) -> dict[str, Any]:
    """``row``'s lineage; an adapter registered before lineages existed counts as a root."""
    if row.lineage:
        return dict(row.lineage)
    docs: list[dict[str, str]] = []
    questions = 0
    if row.job_id:
        job = s.get(AdaptationJob, row.job_id)
        if job is not None:
            docs = [{"id": d.document_id, "title": d.document.title} for d in
                    s.scalars(select(JobDocument).where(JobDocument.job_id == job.id).order_by(JobDocument.position))]
            questions = len(job.eval_questions or [])
    return root_lineage(row.id, docs, questions, _own_accuracy(row.metrics, grader))


def read_parent(s: Session, parent_id: str, tenant_id: str, grader: str) -> ParentSpec:
    """The parent of a claimed job, with every graded version's questions."""
    row = s.get(Adapter, parent_id)
    if row is None or row.tenant_id != tenant_id or row.status != ADAPTER_READY:
        raise JobError(f"the parent adapter {parent_id} no longer exists (deleted after the job was created)")
    lineage = stored_lineage(s, row, grader)
    questions: dict[str, list[dict[str, str]]] = {}
    for v in lineage["versions"]:
        if not v.get("questions"):
            continue
        version = s.get(Adapter, v["adapter_id"])
        job = s.get(AdaptationJob, version.job_id) if version is not None and version.job_id else None
        if job is not None and job.eval_questions:
            questions[v["adapter_id"]] = list(job.eval_questions)
    return ParentSpec(parent_id, row.storage_path, lineage, questions)


def engine_parent(parent: ParentSpec, rehearse: bool, continue_training: bool = True) -> Any:
    """The engine's :class:`~seal_engine.knowledge.lineage.Parent`: weights, rehearsed sequences, ancestors."""
    from seal_engine.core.lora import load_adapter
    from seal_engine.knowledge.documents import Question
    from seal_engine.knowledge.lineage import Ancestor, Parent

    path = Path(parent.path)
    try:
        adapter = load_adapter(path)
    except (OSError, ValueError) as e:
        raise JobError(f"the parent adapter {parent.id} cannot be loaded: {e}") from None
    adapter.relevance = None  # the child calibrates its own
    sequences: list[str] = []
    if rehearse:
        try:
            sequences = list(json.loads((path / RECORD).read_text()).get("sequences", []))
        except (OSError, ValueError) as e:
            raise JobError(f"the parent adapter {parent.id} has no readable record of what it trained on ({e}); "
                           "retry with recipe.rehearse false") from None
    ancestors = [
        Ancestor(v["adapter_id"], [Question(q["question"], q["answer"]) for q in parent.questions.get(v["adapter_id"], [])],
                 v.get("accuracy"))
        for v in parent.lineage["versions"]
    ]
    return Parent(adapter=adapter, sequences=sequences, ancestors=ancestors, rehearse=rehearse,
                  continue_training=continue_training)


def child_lineage(adapter_id: str, documents: list[tuple[str, str, str]], questions: int,
                  metrics: dict[str, Any], grader: str, parent: dict[str, Any] | None) -> dict[str, Any]:
    """The lineage a job registers: ``parent``'s lineage (None: a root) extended by what the job
    measured (``metrics``, also kept in the adapter's record, so a registration after a crash
    computes the same)."""
    docs = [{"id": d[0], "title": d[1]} for d in documents]
    own = _own_accuracy(metrics, grader) if questions else None
    if parent is None:
        return root_lineage(adapter_id, docs, questions, own)
    scores = {a["adapter_id"]: a["accuracy"] for a in (metrics.get("chain") or {}).get("ancestors", [])}
    row = [scores.get(v["adapter_id"]) for v in parent["versions"]]
    return root_lineage(adapter_id, docs, questions, own, parent=parent, row=row)
