"""Shelter fit: photos grouped per animal, the per-animal table and review view, where each row
came from, and the `gone` status.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Confidence = sa.Double()


def _id_type() -> sa.types.TypeEngine:
    """Ids compare byte for byte: MariaDB's default collation ignores letter case (and a PAD
    SPACE one trailing spaces), so such ids would be one row (as labeler.store.schema.IdText)."""
    dialect = op.get_bind().dialect
    if dialect.name not in ("mysql", "mariadb"):
        return sa.String(255)
    if getattr(dialect, "is_mariadb", False):
        collation = "utf8mb4_nopad_bin"
    elif (getattr(dialect, "server_version_info", None) or (0,)) >= (8, 0, 17):
        collation = "utf8mb4_0900_bin"
    else:
        collation = "utf8mb4_bin"
    return mysql.VARCHAR(255, charset="utf8mb4", collation=collation)


STATUS_0001 = "status IN ('pending', 'labelled', 'needs_review', 'failed', 'reviewed')"
STATUS_0003 = "status IN ('pending', 'labelled', 'needs_review', 'failed', 'reviewed', 'gone')"

VIEW_0002 = """
    CREATE VIEW labeler_review_queue AS
    SELECT photo_id, photo_ref, breed, confidence, breed_2, confidence_2, breed_3,
           confidence_3, review_reason, model_version, labelled_at, reviewed_breed, reviewed_by,
           audit
    FROM labeler_photo
    WHERE status = 'needs_review' AND reviewed_breed IS NULL
    """

# Reviewers see the context beside each photo. Photos of an animal are reviewed per animal
# (labeler_group_review_queue), so they leave the per-photo queue.
VIEW_0003 = """
    CREATE VIEW labeler_review_queue AS
    SELECT photo_id, photo_ref, breed, confidence, breed_2, confidence_2, breed_3,
           confidence_3, review_reason, model_version, labelled_at, reviewed_breed, reviewed_by,
           audit, context
    FROM labeler_photo
    WHERE status = 'needs_review' AND reviewed_breed IS NULL AND group_id IS NULL
    """

# Base64 photos have no path: photo_ids (the source keys) is how a shelter's UI finds them.
GROUP_VIEW = """
    CREATE VIEW labeler_group_review_queue AS
    SELECT group_id, context, photo_ids, photos_used, breed, confidence, breed_2, confidence_2,
           breed_3, confidence_3, review_reason, model_version, decided_at, reviewed_breed,
           reviewed_by, audit
    FROM labeler_group
    WHERE status = 'needs_review' AND reviewed_breed IS NULL
    """


def upgrade() -> None:
    IdText = _id_type()
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.alter_column(
            "labeler_photo",
            "photo_id",
            type_=IdText,
            existing_type=sa.String(255),
            existing_nullable=False,
            existing_comment="the source row's id, as text",
        )
    op.execute("DROP VIEW labeler_review_queue")
    with op.batch_alter_table("labeler_photo") as batch:
        batch.add_column(
            sa.Column(
                "group_id",
                IdText,
                nullable=True,
                comment="the source's group column (the animal), as text",
            )
        )
        batch.add_column(
            sa.Column(
                "source_name",
                sa.String(255),
                nullable=True,
                comment="table.id_column the row was read from",
            )
        )
        batch.add_column(
            sa.Column(
                "context",
                sa.String(1000),
                nullable=True,
                comment="configured context columns, for reviewers",
            )
        )
        batch.add_column(
            sa.Column(
                "scores",
                sa.Text(),
                nullable=True,
                comment="JSON: top labels and log-probabilities, for combining",
            )
        )
        batch.drop_constraint(op.f("ck_labeler_photo_status"), type_="check")
        batch.create_check_constraint(op.f("ck_labeler_photo_status"), STATUS_0003)
        batch.create_index("ix_labeler_photo_group_id", ["group_id"])
        batch.create_index("ix_labeler_photo_source_name", ["source_name"])
    op.execute(VIEW_0003)

    op.create_table(
        "labeler_group",
        sa.Column("group_id", IdText, nullable=False, comment="the animal: source group value"),
        sa.Column("status", sa.String(16), server_default="pending", nullable=False),
        sa.Column("breed", sa.String(128), nullable=True),
        sa.Column("confidence", Confidence, nullable=True),
        sa.Column("breed_2", sa.String(128), nullable=True),
        sa.Column("confidence_2", Confidence, nullable=True),
        sa.Column("breed_3", sa.String(128), nullable=True),
        sa.Column("confidence_3", Confidence, nullable=True),
        sa.Column("photos_used", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "photo_ids",
            sa.String(1000),
            nullable=True,
            comment="source ids of the photos combined",
        ),
        sa.Column("model_version", sa.String(128), nullable=True),
        sa.Column("review_reason", sa.String(255), nullable=True),
        sa.Column(
            "audit",
            sa.Integer(),
            server_default="0",
            nullable=False,
            comment="1: a confident answer sent to staff as an audit, never written back",
        ),
        sa.Column("context", sa.String(1000), nullable=True),
        sa.Column(
            "written_values",
            sa.String(1000),
            nullable=True,
            comment="JSON: what labeler last wrote to the target",
        ),
        sa.Column("written_at", sa.DateTime(), nullable=True),
        sa.Column(
            "staff_values",
            sa.String(1000),
            nullable=True,
            comment="JSON: a breed staff set in their own UI",
        ),
        sa.Column("staff_seen_at", sa.DateTime(), nullable=True),
        sa.Column(
            "reviewed_breed",
            sa.String(128),
            nullable=True,
            comment="set by staff; written to the target",
        ),
        sa.Column("reviewed_by", sa.String(128), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(1000), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("discovered_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(STATUS_0003, name=op.f("ck_labeler_group_status")),
        sa.PrimaryKeyConstraint("group_id", name=op.f("pk_labeler_group")),
    )
    op.create_index(op.f("ix_labeler_group_status"), "labeler_group", ["status"])
    op.execute(GROUP_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW labeler_group_review_queue")
    op.drop_index(op.f("ix_labeler_group_status"), table_name="labeler_group")
    op.drop_table("labeler_group")
    op.execute("DROP VIEW labeler_review_queue")
    # Rows that only this revision's status allows cannot stay under the old constraint.
    op.execute("UPDATE labeler_photo SET status = 'failed' WHERE status = 'gone'")
    with op.batch_alter_table("labeler_photo") as batch:
        batch.drop_index("ix_labeler_photo_source_name")
        batch.drop_index("ix_labeler_photo_group_id")
        batch.drop_constraint(op.f("ck_labeler_photo_status"), type_="check")
        batch.create_check_constraint(op.f("ck_labeler_photo_status"), STATUS_0001)
        batch.drop_column("scores")
        batch.drop_column("context")
        batch.drop_column("source_name")
        batch.drop_column("group_id")
    op.execute(VIEW_0002)
    # labeler_photo.photo_id keeps its exact (binary) collation on MariaDB: going back to the
    # case-insensitive one would fail on ids that differ only in letter case.
