"""Lineage: adapters trained from a parent adapter, and named aliases of adapters

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('adaptation_jobs') as batch:
        batch.add_column(sa.Column('parent_id', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('alias', sa.String(length=64), nullable=True))
    with op.batch_alter_table('adapters') as batch:
        batch.add_column(sa.Column('parent_id', sa.String(length=40), nullable=True))
        batch.add_column(sa.Column('lineage', JSON, nullable=True))
        batch.create_index('ix_adapters_parent_id', ['parent_id'], unique=False)
    op.create_table(
        'aliases',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('adapter_id', sa.String(length=40), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name='fk_aliases_tenant_id_tenants', ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name='fk_aliases_adapter_id_adapters'),
        sa.PrimaryKeyConstraint('tenant_id', 'name', name='pk_aliases'),
    )
    op.create_index('ix_aliases_adapter_id', 'aliases', ['adapter_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_aliases_adapter_id', table_name='aliases')
    op.drop_table('aliases')
    with op.batch_alter_table('adapters') as batch:
        batch.drop_index('ix_adapters_parent_id')
        batch.drop_column('lineage')
        batch.drop_column('parent_id')
    with op.batch_alter_table('adaptation_jobs') as batch:
        batch.drop_column('alias')
        batch.drop_column('parent_id')
