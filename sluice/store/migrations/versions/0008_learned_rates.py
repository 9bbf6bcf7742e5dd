"""Learned rates: the last drop of each limit key's adaptive rate (engine/adaptive.py).

Revision ID: 0008
Revises: 0007_scale (relinked on rebase; was 0005)
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007_scale"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "learned_rates",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("configured_per_s", sa.Float(), nullable=False),
        sa.Column("peak_per_s", sa.Float(), nullable=False),
        sa.Column("low_per_s", sa.Float(), nullable=False),
        sa.Column("dropped_at_s", sa.Float(), nullable=False),
        sa.Column("decreases", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_learned_rates"),
    )


def downgrade() -> None:
    op.drop_table("learned_rates")
