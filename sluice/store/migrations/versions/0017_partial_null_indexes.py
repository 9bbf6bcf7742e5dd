"""The parent and external id indexes hold only tasks that have one.

``ix_tasks_parent_id`` (a chain's children, the parent foreign key's check when a task is
deleted) and ``ix_tasks_external_id`` (a task by the provider's id for its object) took an
entry for every task, the NULLs too: every root task has no parent, and no task has the
provider's id until its create is answered. Both now hold only rows with a value
(``WHERE ... IS NOT NULL``), so a new root task is two index entries cheaper to insert,
and on PostgreSQL every update that moves a row to a new version is too. Every read that
uses them compares the column with a value (``=`` or ``IN``), which both databases take as
implying ``IS NOT NULL``, so the same reads use them (tests/integration/test_query_plans.py
and test_sqlite_index_plans.py).

Each index is built again: one read of the table, and on PostgreSQL writes to ``tasks``
wait while it builds (seconds per million tasks).

Revision ID: 0017_partial_null_indexes
Revises: 0016_due_polls
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_partial_null_indexes"
down_revision = "0016_due_polls"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_tasks_parent_id": (["parent_id"], "parent_id IS NOT NULL"),
    "ix_tasks_external_id": (["provider", "external_id"], "external_id IS NOT NULL"),
}


def _rebuild(partial: bool) -> None:
    for name, (columns, predicate) in INDEXES.items():
        where = sa.text(predicate) if partial else None
        op.drop_index(name, table_name="tasks")
        op.create_index(name, "tasks", columns, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    _rebuild(partial=True)


def downgrade() -> None:
    _rebuild(partial=False)
