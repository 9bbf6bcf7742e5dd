"""tasks.maybe_created: a create may have reached the provider, unsettled.

Kept past the end of a task, so that a retry looks the object up before creating it
again. Tasks mid-submission or uncertain when the database is upgraded get it set.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# Plain ADD/DROP COLUMN, not a batch copy: SQLite (3.35+) does both in place, and copying
# ``tasks`` would trip the foreign keys that point at it.


def upgrade() -> None:
    op.add_column(
        "tasks",
        sa.Column("maybe_created", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.execute("UPDATE tasks SET maybe_created = TRUE WHERE phase IN ('submitting', 'uncertain')")


def downgrade() -> None:
    op.drop_column("tasks", "maybe_created")
