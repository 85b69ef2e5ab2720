"""A job's record (how it ran, to make its images again) and the job a rerun runs again.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('rerun_of', sa.String(length=36), nullable=True))
    op.add_column('jobs', sa.Column('record', sa.JSON(), nullable=True))
    op.create_index(op.f('ix_jobs_rerun_of'), 'jobs', ['rerun_of'], unique=False)

