"""64-bit event ids on PostgreSQL; fenced uploads and fleet-wide chores; indexes for keyset
listing and event paging; idempotency keys that expire; retries that name the job they retry;
the trigger that wakes event feeds.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dreamforge.job_store import PG_NOTIFY_FUNCTION, PG_NOTIFY_TRIGGER

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('leases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=255), nullable=False),
    sa.Column('until', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('uploads',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('s3_key', sa.String(length=512), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('s3_key')
    )
    op.create_index(op.f('ix_uploads_created_at'), 'uploads', ['created_at'], unique=False)
    op.create_index(op.f('ix_uploads_job_id'), 'uploads', ['job_id'], unique=False)
    op.create_index('ix_events_job_id_id', 'events', ['job_id', 'id'], unique=False)
    op.add_column('jobs', sa.Column('idempotency_expires_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('jobs', sa.Column('retry_of', sa.String(length=36), nullable=True))
    op.create_index('ix_jobs_created_id', 'jobs', ['created_at', 'id'], unique=False)
    op.create_index(op.f('ix_jobs_retry_of'), 'jobs', ['retry_of'], unique=False)
    op.create_index('ix_jobs_status_created_id', 'jobs', ['status', 'created_at', 'id'], unique=False)
    op.create_index('ix_jobs_type_created_id', 'jobs', ['type', 'created_at', 'id'], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column('events', 'id', type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=False)
        op.execute("ALTER SEQUENCE IF EXISTS events_id_seq AS bigint")
        op.execute(PG_NOTIFY_FUNCTION)
        op.execute(PG_NOTIFY_TRIGGER)
