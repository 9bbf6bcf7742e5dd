"""Indexes for a large backlog: the claim in due order per provider, filtered listings.

Revision ID: 0007_scale
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_scale"
# Relinked at merge if other revisions land first.
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The claim (queue.claim_due) reads one provider's due tasks in (next_attempt_at, id)
    # order and stops at its limit; final tasks have no next_attempt_at and stay out of it.
    op.create_index("ix_tasks_claim", "tasks", ["provider", "next_attempt_at", "id"])
    # GET /api/tasks?status=... and ?kind=... read in id order and stop at the page's end
    # (with or without a tenant); (status) alone made them sort every match.
    op.drop_index("ix_tasks_status", table_name="tasks")
    op.create_index("ix_tasks_status", "tasks", ["status", "id"])
    op.create_index("ix_tasks_kind", "tasks", ["kind", "id"])
    # The reconciler's "claims that lapsed" read only the claimed rows, not the backlog.
    claimed = sa.text("claimed_until IS NOT NULL")
    op.create_index(
        "ix_tasks_claimed_until",
        "tasks",
        ["claimed_until"],
        postgresql_where=claimed,
        sqlite_where=claimed,
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_claimed_until", table_name="tasks")
    op.drop_index("ix_tasks_kind", table_name="tasks")
    op.drop_index("ix_tasks_status", table_name="tasks")
    op.create_index("ix_tasks_status", "tasks", ["status"])
    op.drop_index("ix_tasks_claim", table_name="tasks")
