"""Self-edit policy checkpoints: their families, which one is promoted, promoting one."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from api.errors import APIError, not_found
from api.schemas import PolicyOut, valid_id
from seal_service.db.base import utcnow
from seal_service.db.models import PolicyCheckpoint

RECIPE_PREFIX = "recipe-"


def policy_family(strategy: str) -> str:
    """Policies write either document self-edits ("knowledge") or task recipes ("recipe-text",
    "recipe-arc"); one checkpoint per base model and family can be promoted."""
    return strategy if strategy.startswith(RECIPE_PREFIX) else "knowledge"


def same_family(strategy: str) -> ColumnElement[bool]:
    """SQL condition: a checkpoint of ``strategy``'s family."""
    family = policy_family(strategy)
    if family == "knowledge":
        return PolicyCheckpoint.strategy.not_like(f"{RECIPE_PREFIX}%")
    return PolicyCheckpoint.strategy == family


def promoted_policy(*, db: Session, base_model: str, family: str = "knowledge") -> PolicyCheckpoint | None:
    return db.scalar(
        select(PolicyCheckpoint)
        .where(PolicyCheckpoint.base_model == base_model, PolicyCheckpoint.promoted.is_(True), same_family(family))
        .order_by(PolicyCheckpoint.promoted_at.desc())
        .limit(1)
    )


def policy_out(p: PolicyCheckpoint) -> PolicyOut:
    return PolicyOut(id=p.id, rl_run_id=p.rl_run_id, base_model=p.base_model, strategy=p.strategy,
                     iteration=p.iteration, metrics=p.metrics, promoted=p.promoted, promoted_at=p.promoted_at,
                     created_at=p.created_at)


def list_policies(*, db: Session, limit: int, rl_run_id: str | None = None) -> list[PolicyCheckpoint]:
    """Checkpoints, newest first (of one RL run if given)."""
    q = select(PolicyCheckpoint)
    if rl_run_id:
        q = q.where(PolicyCheckpoint.rl_run_id == rl_run_id)
    return list(db.scalars(q.order_by(PolicyCheckpoint.created_at.desc(), PolicyCheckpoint.iteration.desc())
                           .limit(limit)))


def promote_policy(*, db: Session, checkpoint: str) -> PolicyCheckpoint:
    """Make ``checkpoint`` the promoted one of its base model and family (404 unknown, 409 no weights)."""
    row = db.get(PolicyCheckpoint, checkpoint) if valid_id(checkpoint) else None
    if row is None:
        raise not_found("policy", checkpoint)
    if not row.storage_path or not (Path(row.storage_path) / "adapter_model.safetensors").is_file():
        raise APIError(409, f"policy {checkpoint!r} has no stored weights; it cannot write self-edits",
                       code="policy_without_weights")
    now = utcnow()
    # At most one promoted checkpoint per base model and family (self-edit writers, recipe writers).
    db.execute(update(PolicyCheckpoint)
               .where(PolicyCheckpoint.base_model == row.base_model, PolicyCheckpoint.id != row.id,
                      same_family(row.strategy))
               .values(promoted=False).execution_options(synchronize_session=False))
    row.promoted = True
    row.promoted_at = now
    db.commit()
    db.refresh(row)
    return row
