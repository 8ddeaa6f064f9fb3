"""The labeler's state: one row per photo, one per run, and the review-queue view.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Confidence = sa.Double()


def upgrade() -> None:
    op.create_table(
        "labeler_photo",
        sa.Column(
            "photo_id", sa.String(255), nullable=False, comment="the source row's id, as text"
        ),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column(
            "photo_ref",
            sa.String(1024),
            nullable=True,
            comment="path or URL of the photo; NULL for stored bytes",
        ),
        sa.Column("breed", sa.String(128), nullable=True),
        sa.Column("confidence", Confidence, nullable=True),
        sa.Column("breed_2", sa.String(128), nullable=True),
        sa.Column("confidence_2", Confidence, nullable=True),
        sa.Column("breed_3", sa.String(128), nullable=True),
        sa.Column("confidence_3", Confidence, nullable=True),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(1000), nullable=True),
        sa.Column(
            "review_reason", sa.String(255), nullable=True, comment="why the row was sent to staff"
        ),
        sa.Column(
            "claimed_by",
            sa.String(64),
            nullable=True,
            comment="worker token holding the row; NULL when free",
        ),
        sa.Column("claim_expires_at", sa.DateTime(), nullable=True),
        sa.Column(
            "run_id", sa.Integer(), nullable=True, comment="the run that last wrote a result"
        ),
        sa.Column("discovered_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("labelled_at", sa.DateTime(), nullable=True),
        sa.Column(
            "reviewed_breed",
            sa.String(128),
            nullable=True,
            comment="set by staff; the labeler never changes a row that has one",
        ),
        sa.Column("reviewed_by", sa.String(128), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'labelled', 'needs_review', 'failed', 'reviewed')",
            name=op.f("ck_labeler_photo_status"),
        ),
        sa.PrimaryKeyConstraint("photo_id", name=op.f("pk_labeler_photo")),
    )
    op.create_index(
        op.f("ix_labeler_photo_status_claim_expires_at"),
        "labeler_photo",
        ["status", "claim_expires_at"],
    )
    op.create_index(op.f("ix_labeler_photo_model_version"), "labeler_photo", ["model_version"])
    op.create_index(op.f("ix_labeler_photo_claimed_by"), "labeler_photo", ["claimed_by"])

    op.create_table(
        "labeler_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("command", sa.String(32), nullable=False),
        sa.Column("worker", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), server_default="running", nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("discovered", sa.Integer(), server_default="0", nullable=False),
        sa.Column("labelled", sa.Integer(), server_default="0", nullable=False),
        sa.Column("needs_review", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("released", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "lost",
            sa.Integer(),
            server_default="0",
            nullable=False,
            comment="results dropped because the claim was lost",
        ),
        sa.Column("errors", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labeler_run")),
    )
    op.create_index(op.f("ix_labeler_run_started_at"), "labeler_run", ["started_at"])

    op.execute(
        """
        CREATE VIEW labeler_review_queue AS
        SELECT photo_id, photo_ref, breed, confidence, breed_2, confidence_2, breed_3,
               confidence_3, review_reason, model_version, labelled_at, reviewed_breed, reviewed_by
        FROM labeler_photo
        WHERE status = 'needs_review' AND reviewed_breed IS NULL
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW labeler_review_queue")
    op.drop_index(op.f("ix_labeler_run_started_at"), table_name="labeler_run")
    op.drop_table("labeler_run")
    op.drop_index(op.f("ix_labeler_photo_claimed_by"), table_name="labeler_photo")
    op.drop_index(op.f("ix_labeler_photo_model_version"), table_name="labeler_photo")
    op.drop_index(op.f("ix_labeler_photo_status_claim_expires_at"), table_name="labeler_photo")
    op.drop_table("labeler_photo")
