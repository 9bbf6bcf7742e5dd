"""Filtered task lists read in id order at a million tasks: tenant with status, provider
with status.

``GET /api/tasks`` and the console list a filter's tasks in id order after a keyset cursor.
A tenant's key always filters by tenant, so "a tenant's failed tasks" read
``ix_tasks_status`` in id order and threw away the other tenants' rows (715 pages for 100
rows at a million tasks, 140-170 ms from a cold cache on this machine);
``ix_tasks_tenant_status`` (tenant, status, id) reads just the page asked. For the same
reason ``ix_tasks_provider_status`` gains ``id`` as its last column, so a provider's tasks
in one status come in id order without a sort (its other use, counting per provider and
status, reads the same leading columns).

Revision ID: 0013_list_indexes
Revises: 0012_fair_order
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013_list_indexes"
down_revision = "0012_fair_order"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_tenant_status", "tasks", ["tenant", "status", "id"])
    op.drop_index("ix_tasks_provider_status", table_name="tasks")
    op.create_index("ix_tasks_provider_status", "tasks", ["provider", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_provider_status", table_name="tasks")
    op.create_index("ix_tasks_provider_status", "tasks", ["provider", "status"])
    op.drop_index("ix_tasks_tenant_status", table_name="tasks")
