"""Few-shot task jobs: the task (examples, optional recipe) stored with the job

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('adaptation_jobs') as batch:
        batch.add_column(sa.Column('task', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('adaptation_jobs') as batch:
        batch.drop_column('task')
