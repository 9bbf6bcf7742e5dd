"""Fair shares in budget units: ``fair_shares.granted`` and ``prev_granted`` become floats.

A key's grants are now counted in the units of the provider's budget its tasks use (a
create that costs 5 counts 5; a polled task counts its part of a full batch poll), so the
counters hold fractions. Existing counts carry over unchanged (a task cost 1 before).

Revision ID: 0014_fair_share_units
Revises: 0013_tenant_status
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_fair_share_units"
down_revision = "0013_tenant_status"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fair_shares") as batch:
        for column in ("granted", "prev_granted"):
            batch.alter_column(
                column, existing_type=sa.Integer(), type_=sa.Float(), existing_nullable=False
            )


def downgrade() -> None:
    with op.batch_alter_table("fair_shares") as batch:
        for column in ("granted", "prev_granted"):
            batch.alter_column(
                column, existing_type=sa.Float(), type_=sa.Integer(), existing_nullable=False
            )
