"""Audit sampling and calibrated thresholds: labeler_photo.audit, labeler_threshold, and the
review-queue view showing which rows are audits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Confidence = sa.Double()

AUDIT_COMMENT = "1: a confident result sent to staff as a random audit; 0 otherwise"

# The view is dropped and recreated around the ALTER: SQLite alters through a table copy, and
# no database lets a view keep pointing at a column list that changes under it.
VIEW_0001 = """
    CREATE VIEW labeler_review_queue AS
    SELECT photo_id, photo_ref, breed, confidence, breed_2, confidence_2, breed_3,
           confidence_3, review_reason, model_version, labelled_at, reviewed_breed, reviewed_by
    FROM labeler_photo
    WHERE status = 'needs_review' AND reviewed_breed IS NULL
    """

VIEW_0002 = """
    CREATE VIEW labeler_review_queue AS
    SELECT photo_id, photo_ref, breed, confidence, breed_2, confidence_2, breed_3,
           confidence_3, review_reason, model_version, labelled_at, reviewed_breed, reviewed_by,
           audit
    FROM labeler_photo
    WHERE status = 'needs_review' AND reviewed_breed IS NULL
    """


def upgrade() -> None:
    op.execute("DROP VIEW labeler_review_queue")
    with op.batch_alter_table("labeler_photo") as batch:
        batch.add_column(
            sa.Column(
                "audit", sa.Integer(), server_default="0", nullable=False, comment=AUDIT_COMMENT
            )
        )
    op.execute(VIEW_0002)

    op.create_table(
        "labeler_threshold",
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("review_threshold", Confidence, nullable=False),
        sa.Column("review_margin", Confidence, nullable=True),
        sa.Column("target_precision", Confidence, nullable=False),
        sa.Column(
            "precision_lower",
            Confidence,
            nullable=True,
            comment="lower confidence bound of precision at the threshold when it was set",
        ),
        sa.Column("coverage", Confidence, nullable=True),
        sa.Column("rows_used", sa.Integer(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("model_version", name=op.f("pk_labeler_threshold")),
        comment="review thresholds calibrated from this shelter's staff decisions",
    )


def downgrade() -> None:
    op.drop_table("labeler_threshold")
    op.execute("DROP VIEW labeler_review_queue")
    with op.batch_alter_table("labeler_photo") as batch:
        batch.drop_column("audit")
    op.execute(VIEW_0001)
