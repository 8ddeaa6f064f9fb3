"""A replaced photo is labelled again: each photo row records what was classified, the sha256
of the photo's bytes and the source's change marker read with them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

COLUMNS = ("fingerprint", "change_marker")


def upgrade() -> None:
    # Plain ADD COLUMN on every server: SQLite adds a column in place, without the table copy
    # a batch operation makes (which would trip over the review view built on this table).
    op.add_column(
        "labeler_photo",
        sa.Column(
            "fingerprint",
            sa.String(64),
            nullable=True,
            comment="sha256 (hex) of the photo bytes classified",
        ),
    )
    op.add_column(
        "labeler_photo",
        sa.Column(
            "change_marker",
            sa.String(255),
            nullable=True,
            comment="LABELER_SOURCE_CHANGE_COLUMN's value (as text) when the photo was read",
        ),
    )


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite 3.35 or newer), for the same reason.
    for name in COLUMNS:
        op.execute(f"ALTER TABLE labeler_photo DROP COLUMN {name}")
