"""initial schema: tenants, API keys, documents, jobs, self-edits, adapters, RL runs, policies

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# JSON everywhere, JSONB on PostgreSQL.
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tenants'))
    )
    op.create_table('worker_heartbeats',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('hostname', sa.String(length=200), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('queue', sa.String(length=200), nullable=False),
    sa.Column('base_model', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_worker_heartbeats'))
    )
    op.create_index(op.f('ix_worker_heartbeats_last_seen'), 'worker_heartbeats', ['last_seen'])

    op.create_table('api_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('is_admin', sa.Boolean(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_api_keys_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    op.create_index(op.f('ix_api_keys_tenant_id'), 'api_keys', ['tenant_id'])

    op.create_table('documents',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_documents_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_documents'))
    )
    op.create_index(op.f('ix_documents_sha256'), 'documents', ['sha256'])
    op.create_index(op.f('ix_documents_tenant_id'), 'documents', ['tenant_id'])

    op.create_table('rl_runs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('base_model', sa.String(length=200), nullable=False),
    sa.Column('strategy', sa.String(length=64), nullable=False),
    sa.Column('config', JSON, nullable=False),
    sa.Column('metrics', JSON, nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('task_id', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_rl_runs_tenant_id_tenants'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rl_runs'))
    )
    op.create_index(op.f('ix_rl_runs_status'), 'rl_runs', ['status'])
    op.create_index(op.f('ix_rl_runs_tenant_id'), 'rl_runs', ['tenant_id'])

    op.create_table('policy_checkpoints',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('rl_run_id', sa.String(length=40), nullable=True),
    sa.Column('base_model', sa.String(length=200), nullable=False),
    sa.Column('strategy', sa.String(length=64), nullable=False),
    sa.Column('iteration', sa.Integer(), nullable=False),
    sa.Column('storage_path', sa.Text(), nullable=True),
    sa.Column('metrics', JSON, nullable=True),
    sa.Column('promoted', sa.Boolean(), nullable=False),
    sa.Column('promoted_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['rl_run_id'], ['rl_runs.id'], name=op.f('fk_policy_checkpoints_rl_run_id_rl_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_checkpoints'))
    )
    op.create_index(op.f('ix_policy_checkpoints_base_model'), 'policy_checkpoints', ['base_model'])
    op.create_index(op.f('ix_policy_checkpoints_promoted'), 'policy_checkpoints', ['promoted'])
    op.create_index(op.f('ix_policy_checkpoints_rl_run_id'), 'policy_checkpoints', ['rl_run_id'])

    op.create_table('adaptation_jobs',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('base_model', sa.String(length=200), nullable=False),
    sa.Column('strategy', sa.String(length=64), nullable=False),
    sa.Column('template', sa.Text(), nullable=True),
    sa.Column('policy_id', sa.String(length=40), nullable=True),
    sa.Column('num_self_edits', sa.Integer(), nullable=False),
    sa.Column('lora', JSON, nullable=False),
    sa.Column('eval_questions', JSON, nullable=True),
    sa.Column('seed', sa.Integer(), nullable=True),
    sa.Column('metrics', JSON, nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('adapter_id', sa.String(length=40), nullable=False),
    sa.Column('task_id', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['policy_id'], ['policy_checkpoints.id'], name=op.f('fk_adaptation_jobs_policy_id_policy_checkpoints'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_adaptation_jobs_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adaptation_jobs')),
    sa.UniqueConstraint('adapter_id', name=op.f('uq_adaptation_jobs_adapter_id'))
    )
    op.create_index(op.f('ix_adaptation_jobs_status'), 'adaptation_jobs', ['status'])
    op.create_index(op.f('ix_adaptation_jobs_tenant_id'), 'adaptation_jobs', ['tenant_id'])

    op.create_table('adapters',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('base_model', sa.String(length=200), nullable=False),
    sa.Column('storage_path', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('strategy', sa.String(length=64), nullable=False),
    sa.Column('policy_id', sa.String(length=40), nullable=True),
    sa.Column('metrics', JSON, nullable=True),
    sa.Column('lora', JSON, nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['adaptation_jobs.id'], name=op.f('fk_adapters_job_id_adaptation_jobs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['policy_id'], ['policy_checkpoints.id'], name=op.f('fk_adapters_policy_id_policy_checkpoints'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_adapters_tenant_id_tenants'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapters')),
    sa.UniqueConstraint('job_id', name=op.f('uq_adapters_job_id'))
    )
    op.create_index(op.f('ix_adapters_status'), 'adapters', ['status'])
    op.create_index(op.f('ix_adapters_tenant_id'), 'adapters', ['tenant_id'])

    op.create_table('job_documents',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('document_id', sa.String(length=40), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_job_documents_document_id_documents'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['job_id'], ['adaptation_jobs.id'], name=op.f('fk_job_documents_job_id_adaptation_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'position', name=op.f('pk_job_documents'))
    )
    op.create_index(op.f('ix_job_documents_document_id'), 'job_documents', ['document_id'])

    op.create_table('self_edits',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('document_id', sa.String(length=40), nullable=True),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('strategy', sa.String(length=64), nullable=False),
    sa.Column('policy_id', sa.String(length=40), nullable=True),
    sa.Column('reward', JSON, nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], name=op.f('fk_self_edits_document_id_documents'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['job_id'], ['adaptation_jobs.id'], name=op.f('fk_self_edits_job_id_adaptation_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['policy_id'], ['policy_checkpoints.id'], name=op.f('fk_self_edits_policy_id_policy_checkpoints'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_self_edits')),
    sa.UniqueConstraint('job_id', 'position', name=op.f('uq_self_edits_job_id'))
    )
    op.create_index(op.f('ix_self_edits_job_id'), 'self_edits', ['job_id'])



def downgrade() -> None:
    op.drop_index(op.f('ix_self_edits_job_id'), table_name='self_edits')

    op.drop_table('self_edits')
    op.drop_index(op.f('ix_job_documents_document_id'), table_name='job_documents')

    op.drop_table('job_documents')
    op.drop_index(op.f('ix_adapters_tenant_id'), table_name='adapters')
    op.drop_index(op.f('ix_adapters_status'), table_name='adapters')

    op.drop_table('adapters')
    op.drop_index(op.f('ix_adaptation_jobs_tenant_id'), table_name='adaptation_jobs')
    op.drop_index(op.f('ix_adaptation_jobs_status'), table_name='adaptation_jobs')

    op.drop_table('adaptation_jobs')
    op.drop_index(op.f('ix_policy_checkpoints_rl_run_id'), table_name='policy_checkpoints')
    op.drop_index(op.f('ix_policy_checkpoints_promoted'), table_name='policy_checkpoints')
    op.drop_index(op.f('ix_policy_checkpoints_base_model'), table_name='policy_checkpoints')

    op.drop_table('policy_checkpoints')
    op.drop_index(op.f('ix_rl_runs_tenant_id'), table_name='rl_runs')
    op.drop_index(op.f('ix_rl_runs_status'), table_name='rl_runs')

    op.drop_table('rl_runs')
    op.drop_index(op.f('ix_documents_tenant_id'), table_name='documents')
    op.drop_index(op.f('ix_documents_sha256'), table_name='documents')

    op.drop_table('documents')
    op.drop_index(op.f('ix_api_keys_tenant_id'), table_name='api_keys')

    op.drop_table('api_keys')
    op.drop_index(op.f('ix_worker_heartbeats_last_seen'), table_name='worker_heartbeats')

    op.drop_table('worker_heartbeats')
    op.drop_table('tenants')
