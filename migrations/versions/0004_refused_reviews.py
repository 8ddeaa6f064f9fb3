"""Refused reviews stay in the queue: a reviewed breed labeler cannot write (not a label of the
breed map, a typo, an empty value) is kept as staff wrote it, with the reason beside it, and the
animal stays in the per-animal review view until staff change it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

GROUP_VIEW_0003 = """
    CREATE VIEW labeler_group_review_queue AS
    SELECT group_id, context, photo_ids, photos_used, breed, confidence, breed_2, confidence_2,
           breed_3, confidence_3, review_reason, model_version, decided_at, reviewed_breed,
           reviewed_by, audit
    FROM labeler_group
    WHERE status = 'needs_review' AND reviewed_breed IS NULL
    """

# An animal whose reviewed breed was refused stays listed while reviewed_breed still holds the
# refused value; a new value leaves the queue at once, as any review does, and the next pass
# writes it or refuses it again. The refusal shows only while it is about the value staff see.
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


def upgrade() -> None:
    op.execute("DROP VIEW labeler_group_review_queue")
    with op.batch_alter_table("labeler_group") as batch:
        batch.add_column(
            sa.Column(
                "refused_breed",
                sa.String(128),
                nullable=True,
                comment="a reviewed_breed labeler could not write, as staff set it",
            )
        )
        batch.add_column(
            sa.Column(
                "refusal", sa.String(255), nullable=True, comment="why that reviewed breed failed"
            )
        )
    op.execute(GROUP_VIEW_0004)


def downgrade() -> None:
    op.execute("DROP VIEW labeler_group_review_queue")
    with op.batch_alter_table("labeler_group") as batch:
        batch.drop_column("refusal")
        batch.drop_column("refused_breed")
    op.execute(GROUP_VIEW_0003)
