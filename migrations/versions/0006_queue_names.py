"""Staff read the review queue in their own vocabulary: each animal keeps its top breeds' names
from the breed map (the view cannot read the map), and the view shows the confidence as a whole
percentage beside the model's labels.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NAMES = ("breed_name", "breed_name_2", "breed_name_3")

GROUP_VIEW_0004 = """
    CREATE VIEW labeler_group_review_queue AS
    SELECT group_id, context, photo_ids, photos_used, breed, confidence, breed_2, confidence_2,
           breed_3, confidence_3, review_reason, model_version, decided_at, reviewed_breed,
           reviewed_by, audit,
           CASE WHEN reviewed_breed = refused_breed THEN refusal END AS refusal
    FROM labeler_group
    WHERE status = 'needs_review'
      AND (reviewed_breed IS NULL OR reviewed_breed = refused_breed)
    """

# A whole number on every server: ROUND of a double stays a double on PostgreSQL (and SQLite),
# which a report engine prints as "23.0". MySQL casts to SIGNED, not INTEGER.
GROUP_VIEW_0006 = """
    CREATE VIEW labeler_group_review_queue AS
    SELECT group_id, context, photo_ids, photos_used, breed, confidence, breed_2, confidence_2,
           breed_3, confidence_3, review_reason, model_version, decided_at, reviewed_breed,
           reviewed_by, audit,
           CASE WHEN reviewed_breed = refused_breed THEN refusal END AS refusal,
           breed_name, breed_name_2, breed_name_3,
           CAST(ROUND(confidence * 100) AS {integer}) AS confidence_pct
    FROM labeler_group
    WHERE status = 'needs_review'
      AND (reviewed_breed IS NULL OR reviewed_breed = refused_breed)
    """


def _integer() -> str:
    return "SIGNED" if op.get_bind().dialect.name in ("mysql", "mariadb") else "INTEGER"


def upgrade() -> None:
    op.execute("DROP VIEW labeler_group_review_queue")
    # Plain ADD COLUMN: SQLite adds it in place, without the table copy of a batch operation.
    for name, what in zip(NAMES, ("breed", "breed_2", "breed_3"), strict=True):
        op.add_column(
            "labeler_group",
            sa.Column(
                name,
                sa.String(255),
                nullable=True,
                comment=f"{what} in the shelter's vocabulary (breed map), when decided",
            ),
        )
    op.execute(GROUP_VIEW_0006.format(integer=_integer()))


def downgrade() -> None:
    op.execute("DROP VIEW labeler_group_review_queue")
    # ALTER TABLE ... DROP COLUMN in place (SQLite 3.35 or newer), for the same reason.
    for name in NAMES:
        op.execute(f"ALTER TABLE labeler_group DROP COLUMN {name}")
    op.execute(GROUP_VIEW_0004)
