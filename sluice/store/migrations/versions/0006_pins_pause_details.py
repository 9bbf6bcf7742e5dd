"""Operator controls: pinned rates per limit key, and who paused a key, why, by what signal.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from sluice.store.tables import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "limit_pins",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("rate_limit", sa.Integer(), nullable=False),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("since", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_limit_pins"),
    )
    with op.batch_alter_table("limiter_pauses") as batch:
        batch.add_column(sa.Column("signal", sa.String(32), nullable=True))
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch.add_column(sa.Column("actor", sa.String(200), nullable=True))
        batch.add_column(sa.Column("since", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("limiter_pauses") as batch:
        batch.drop_column("since")
        batch.drop_column("actor")
        batch.drop_column("reason")
        batch.drop_column("signal")
    op.drop_table("limit_pins")
