"""The console: usage counters per limit key, bulk jobs, task list indexes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sluice.store.tables import BigId, Payload, UTCDateTime

revision = "0011"
# Chain: 0006 pins, 0007_scale, 0008 learned rates, 0009 quotas, 0010 fair shares, 0011.
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_counts",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("bucket", UTCDateTime(), nullable=False),
        sa.Column("width_s", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", "bucket", "width_s", "metric", name="pk_usage_counts"),
    )
    op.create_index("ix_usage_counts_bucket", "usage_counts", ["width_s", "bucket"])
    op.create_table(
        "bulk_jobs",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("filter", Payload, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=True),
        sa.Column("max_id", BigId, nullable=False),
        sa.Column("previewed", sa.BigInteger(), nullable=False),
        sa.Column("cursor", BigId, nullable=False),
        sa.Column("changed", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_bulk_jobs"),
    )
    op.create_index("ix_bulk_jobs_state", "bulk_jobs", ["state", "id"])
    op.create_index("ix_tasks_created_at", "tasks", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_tasks_created_at", table_name="tasks")
    op.drop_index("ix_bulk_jobs_state", table_name="bulk_jobs")
    op.drop_table("bulk_jobs")
    op.drop_index("ix_usage_counts_bucket", table_name="usage_counts")
    op.drop_table("usage_counts")
