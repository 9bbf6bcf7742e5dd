"""A fair claim takes a key's polls and its creates in turns: the polls' own index.

``ix_tasks_due_polls`` holds only tasks in ``polling`` or ``uncertain`` (a status poll, a
lookup by client reference), per provider and fairness key, in due order. A fair claim
reads a key's due polls along it and its other due work (``ready``) along
``ix_tasks_fair_order``, and hands them out in turns, a poll first: a poll no longer waits
behind every create queued before it (docs/operations.md, "Fair share"). Only tasks in
flight at the provider are in it, so it is small beside the backlog; ``ix_tasks_fair_order``
is kept as it is (rebuilding it would read every active task).

Revision ID: 0016_due_polls
Revises: 0015_events_without_fk
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_due_polls"
down_revision = "0015_events_without_fk"
branch_labels = None
depends_on = None

POLLS = sa.text("phase IN ('polling', 'uncertain')")


def upgrade() -> None:
    op.create_index(
        "ix_tasks_due_polls",
        "tasks",
        ["provider", "fairness_key", "next_attempt_at", "id"],
        postgresql_where=POLLS,
        sqlite_where=POLLS,
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_due_polls", table_name="tasks")
