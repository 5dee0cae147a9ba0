"""Retention gate: per-job recipe overrides and forgetting bound, machine-readable job errors

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('adaptation_jobs') as batch:
        batch.add_column(sa.Column('recipe', JSON, nullable=True))
        batch.add_column(sa.Column('max_forgetting', sa.Float(), nullable=True))
        batch.add_column(sa.Column('error_code', sa.String(length=64), nullable=True))
    # Jobs that failed before codes existed keep their message; their kind is unknown.
    op.execute("UPDATE adaptation_jobs SET error_code = 'job_failed' WHERE error IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('adaptation_jobs') as batch:
        batch.drop_column('error_code')
        batch.drop_column('max_forgetting')
        batch.drop_column('recipe')
