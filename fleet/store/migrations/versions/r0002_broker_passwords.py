"""Broker passwords: a device's Mosquitto password hash, for brokers without mTLS.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04

The table came with the closed broker (issue 13) before migrations existed, so a
database adopted at the baseline may hold it already; it is then left as it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if "broker_passwords" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "broker_passwords",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )


def downgrade() -> None:
    op.drop_table("broker_passwords")
