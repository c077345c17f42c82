"""Drop the retired ``dead_letter`` table, which kept whole payloads.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

Its bounded successor ``dead_letters`` came as a new table because ``create_all`` could
not change an existing one; databases from before still hold the old one, unread since.
A database made after that change never had it: then there is nothing to drop.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if "dead_letter" in sa.inspect(op.get_bind()).get_table_names():
        op.drop_table("dead_letter")


def downgrade() -> None:
    # Nothing read it: a downgrade does not bring an empty copy back.
    pass
