"""``task_events.task_id`` no longer has a foreign key to ``tasks``.

Every event is written in the transaction that inserts its task or changes its row (so
the task exists and is locked until the event commits), and retention deletes a task's
events before the task: the constraint never refused a write, and its check cost every
event a lookup of the task and a row lock (PostgreSQL writes the lock to the task's page
and the WAL). A 10,000-task bulk create spent about 3.8 µs per task on it, a tenth of the
ingest's time (docs/scaling.md). The index on ``task_id`` stays.

Downgrading deletes events whose task is gone, then adds the constraint back.

Revision ID: 0015_events_without_fk
Revises: 0014_fair_share_units
Create Date: 2026-12-06
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import op
from alembic.operations import BatchOperations

revision = "0015_events_without_fk"
down_revision = "0014_fair_share_units"
branch_labels = None
depends_on = None

FOREIGN_KEY = "fk_task_events_task_id_tasks"
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}


@contextmanager
def _events_table() -> Iterator[BatchOperations]:
    """``task_events`` altered (on SQLite: copied into a new table). Reflecting it reads
    ``tasks`` too, whose expression index SQLAlchemy cannot reflect (and need not here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based")
        with op.batch_alter_table("task_events", naming_convention=NAMING) as batch:
            yield batch


def upgrade() -> None:
    with _events_table() as batch:
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")


def downgrade() -> None:
    # NOT EXISTS, an anti-join: ``NOT IN (SELECT id FROM tasks)`` scans the task ids again
    # for every event once they outgrow PostgreSQL's work_mem.
    op.execute(
        "DELETE FROM task_events WHERE NOT EXISTS "
        "(SELECT 1 FROM tasks WHERE tasks.id = task_events.task_id)"
    )
    with _events_table() as batch:
        batch.create_foreign_key(FOREIGN_KEY, "tasks", ["task_id"], ["id"], ondelete="CASCADE")
