"""A tenant's tasks in one status, read in id order: ``ix_tasks_tenant_status``.

``GET /api/tasks`` and the console list a filter's tasks in id order after a keyset cursor,
and a tenant's key always filters by its tenant. "A tenant's failed tasks" read
``ix_tasks_status (status, id)`` in id order and fetched and dropped the other tenants' rows:
715 pages for a page of 100 at a million tasks (one tenant in seven), 140-170 ms from a
cold cache on this machine. ``(tenant, status, id)`` reads just the page asked (104 pages,
2 ms). It costs about 51 bytes per task (51 MB at a million).

``ix_tasks_provider_status (provider, status)`` is left as it is: with few providers its
entries deduplicate (7 MB at a million, the /metrics counts read it alone); with ``id``
added it would be as large as this one.

Revision ID: 0013_tenant_status
Revises: 0012_fair_order
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013_tenant_status"
down_revision = "0012_fair_order"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_tenant_status", "tasks", ["tenant", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_tasks_tenant_status", table_name="tasks")
