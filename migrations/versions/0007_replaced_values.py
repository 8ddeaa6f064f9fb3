"""Taking an answer back gives the record what it held: each animal keeps the values labeler's
first write replaced in the breed map's columns that LABELER_TARGET_UNDECIDED does not name
(ASM3's Breed2ID and CrossBreed), so a withdrawal restores them too.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: SQLite adds it in place, without the table copy of a batch operation.
    op.add_column(
        "labeler_group",
        sa.Column(
            "replaced_values",
            sa.String(1000),
            nullable=True,
            comment="JSON: what the record held before labeler's first write",
        ),
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite 3.35 or newer), for the same reason.
    op.execute("ALTER TABLE labeler_group DROP COLUMN replaced_values")
