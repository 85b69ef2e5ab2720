"""Fewer index writes per job: the indexes that were a prefix of a longer one on the same table
go (ix_jobs_status, ix_jobs_created_at, ix_events_job_id), and the retry and rerun indexes hold
only the jobs that are retries or reruns. Every POST writes each index of jobs, steps and events
once, and every status move rewrites the status indexes.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# (index, table, columns) of the indexes a longer one serves.
PREFIXES = [("ix_jobs_status", "jobs", ["status"]),
            ("ix_jobs_created_at", "jobs", ["created_at"]),
            ("ix_events_job_id", "events", ["job_id"])]
NULL_MOSTLY = [("ix_jobs_retry_of", "retry_of"), ("ix_jobs_rerun_of", "rerun_of")]


def upgrade() -> None:
    for name, table, _columns in PREFIXES:
        op.drop_index(name, table_name=table)
    for name, column in NULL_MOSTLY:
        op.drop_index(name, table_name="jobs")
        condition = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "jobs", [column], sqlite_where=condition, postgresql_where=condition)


def downgrade() -> None:
    for name, column in NULL_MOSTLY:
        op.drop_index(name, table_name="jobs")
        op.create_index(name, "jobs", [column])
    for name, table, columns in PREFIXES:
        op.create_index(name, table, columns)
