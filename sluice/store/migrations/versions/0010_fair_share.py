"""Fair share and priorities: tasks.priority, tasks.fairness_key, the fair_shares table.

Existing tasks get priority 0 and their tenant as fairness key.

Revision ID: 0010
Revises: 0007_scale
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sluice.store.tables import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(
            sa.Column("fairness_key", sa.String(128), nullable=False, server_default="default")
        )
    op.execute("UPDATE tasks SET fairness_key = tenant")
    op.create_index("ix_tasks_fair", "tasks", ["provider", "fairness_key", "phase"])
    op.create_table(
        "fair_shares",
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("fairness_key", sa.String(128), nullable=False),
        sa.Column("vtime", sa.Float(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("minute", UTCDateTime(), nullable=True),
        sa.Column("granted", sa.Integer(), nullable=False),
        sa.Column("prev_granted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("provider", "fairness_key", name="pk_fair_shares"),
    )


def downgrade() -> None:
    op.drop_table("fair_shares")
    op.drop_index("ix_tasks_fair", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("fairness_key")
        batch.drop_column("priority")
