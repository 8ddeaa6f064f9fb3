"""Each classified photo keeps a compact record of the network's outputs (its raw
log-probabilities and projected features), so ``labeler adapt`` refits the head on staff's
decisions without reading a photo again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: SQLite adds it in place, without the table copy of a batch operation.
    op.add_column(
        "labeler_photo",
        sa.Column(
            "features",
            sa.LargeBinary(),
            nullable=True,
            comment="the network's outputs for adapting (labeler.model.features), under 1 kB",
        ),
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite 3.35 or newer), for the same reason.
    op.execute("ALTER TABLE labeler_photo DROP COLUMN features")
