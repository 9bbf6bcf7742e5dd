"""Provider pauses, kept in the database so that losing Redis does not lose them.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sluice.store.tables import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limiter_pauses",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("until", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_limiter_pauses"),
    )


def downgrade() -> None:
    op.drop_table("limiter_pauses")
