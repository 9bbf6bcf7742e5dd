"""A fair claim takes a key's polls and its creates in turns, each along its own index.

``ix_tasks_due_polls`` holds only tasks in ``polling`` or ``uncertain`` (a status poll, a
lookup by client reference), per provider and fairness key, in due order: a key's polls
are read along it and stop at the first not due yet. ``ix_tasks_fair_order`` now holds
only ``ready`` tasks (a create, a child's create), in within-key order (priority, children
first, due time, id). Over every active phase it held the polls too, and the children of
trees polled in flight sorted before every root (children first), due or not: each read
of a key's roots walked past all of them. A fair claim hands the two streams out in turns,
a poll first, so a poll no longer waits behind every create queued before it
(docs/operations.md, "Fair share").

``fair_shares.polls_next`` keeps each key's turn across claims (whose turn comes first in
its next claim, its polls' or its creates'): a claim that gives a key one slot takes the
stream whose turn it is, so neither stream starves behind the other. Existing rows start
with the polls' turn.

Rebuilding ``ix_tasks_fair_order`` reads the table once and, on PostgreSQL, holds writes to
``tasks`` back while it builds (seconds per million tasks).

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

ACTIVE = sa.text("phase IN ('ready', 'polling', 'uncertain')")
READY = sa.text("phase = 'ready'")
POLLS = sa.text("phase IN ('polling', 'uncertain')")
FAIR_ORDER: list[str | sa.TextClause] = [
    "provider",
    "fairness_key",
    sa.text("priority DESC"),
    sa.text("(parent_id IS NULL)"),
    "next_attempt_at",
    "id",
]


def _fair_order(where: sa.TextClause) -> None:
    op.drop_index("ix_tasks_fair_order", table_name="tasks")
    op.create_index(
        "ix_tasks_fair_order", "tasks", FAIR_ORDER, postgresql_where=where, sqlite_where=where
    )


def upgrade() -> None:
    op.create_index(
        "ix_tasks_due_polls",
        "tasks",
        ["provider", "fairness_key", "next_attempt_at", "id"],
        postgresql_where=POLLS,
        sqlite_where=POLLS,
    )
    _fair_order(READY)
    with op.batch_alter_table("fair_shares") as batch:
        batch.add_column(
            sa.Column("polls_next", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("fair_shares") as batch:
        batch.drop_column("polls_next")
    _fair_order(ACTIVE)
    op.drop_index("ix_tasks_due_polls", table_name="tasks")
