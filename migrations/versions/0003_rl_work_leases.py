"""Leases on RL work units (per-passage evaluations and the run's step)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('rl_work_leases',
    sa.Column('rl_run_id', sa.String(length=40), nullable=False),
    sa.Column('iteration', sa.Integer(), nullable=False),
    sa.Column('unit', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['rl_run_id'], ['rl_runs.id'], name=op.f('fk_rl_work_leases_rl_run_id_rl_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('rl_run_id', 'iteration', 'unit', name=op.f('pk_rl_work_leases')),
    )


def downgrade() -> None:
    op.drop_table('rl_work_leases')
