"""RL samples and per-passage evaluations

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('rl_samples',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('rl_run_id', sa.String(length=40), nullable=False),
    sa.Column('iteration', sa.Integer(), nullable=False),
    sa.Column('passage', sa.Integer(), nullable=False),
    sa.Column('sample', sa.Integer(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('policy_id', sa.String(length=40), nullable=True),
    sa.Column('seeds', JSON, nullable=True),
    sa.Column('rewards', JSON, nullable=True),
    sa.Column('reward', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['rl_run_id'], ['rl_runs.id'], name=op.f('fk_rl_samples_rl_run_id_rl_runs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_id'], ['policy_checkpoints.id'], name=op.f('fk_rl_samples_policy_id_policy_checkpoints'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rl_samples')),
    sa.UniqueConstraint('rl_run_id', 'iteration', 'passage', 'sample', name=op.f('uq_rl_samples_rl_run_id')),
    )
    op.create_index(op.f('ix_rl_samples_rl_run_id'), 'rl_samples', ['rl_run_id'])
    op.create_table('rl_evaluations',
    sa.Column('rl_run_id', sa.String(length=40), nullable=False),
    sa.Column('iteration', sa.Integer(), nullable=False),
    sa.Column('passage', sa.Integer(), nullable=False),
    sa.Column('result', JSON, nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['rl_run_id'], ['rl_runs.id'], name=op.f('fk_rl_evaluations_rl_run_id_rl_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('rl_run_id', 'iteration', 'passage', name=op.f('pk_rl_evaluations')),
    )


def downgrade() -> None:
    op.drop_table('rl_evaluations')
    op.drop_index(op.f('ix_rl_samples_rl_run_id'), table_name='rl_samples')
    op.drop_table('rl_samples')
