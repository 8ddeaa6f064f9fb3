"""The labeler's own tables. The association's tables are never described here: they are
reflected at run time from the configured names (see :mod:`labeler.source`)."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

# Everything the labeler owns starts with this prefix, so migrations and `alembic check`
# can ignore the association's own tables in the same database.
PREFIX = "labeler_"
VERSION_TABLE = "labeler_alembic_version"
REVIEW_VIEW = "labeler_review_queue"

PENDING = "pending"
LABELLED = "labelled"
NEEDS_REVIEW = "needs_review"
FAILED = "failed"
REVIEWED = "reviewed"
STATUSES = (PENDING, LABELLED, NEEDS_REVIEW, FAILED, REVIEWED)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Double precision everywhere: MySQL's plain FLOAT is single precision.
Confidence: Double[float] = Double()

photo = Table(
    "labeler_photo",
    metadata,
    Column("photo_id", String(255), primary_key=True, comment="the source row's id, as text"),
    Column("status", String(16), nullable=False, server_default=PENDING),
    Column("photo_ref", String(1024), comment="path or URL of the photo; NULL for stored bytes"),
    Column("breed", String(128)),
    Column("confidence", Confidence),
    Column("breed_2", String(128)),
    Column("confidence_2", Confidence),
    Column("breed_3", String(128)),
    Column("confidence_3", Confidence),
    Column("model_version", String(128)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", String(1000)),
    Column("review_reason", String(255), comment="why the row was sent to staff"),
    Column("claimed_by", String(64), comment="worker token holding the row; NULL when free"),
    Column("claim_expires_at", DateTime()),
    Column("run_id", Integer, comment="the run that last wrote a result"),
    Column("discovered_at", DateTime(), nullable=False),
    Column("updated_at", DateTime(), nullable=False),
    Column("labelled_at", DateTime()),
    Column(
        "reviewed_breed",
        String(128),
        comment="set by staff; the labeler never changes a row that has one",
    ),
    Column("reviewed_by", String(128)),
    Column("reviewed_at", DateTime()),
    CheckConstraint(
        "status IN ('pending', 'labelled', 'needs_review', 'failed', 'reviewed')", name="status"
    ),
    Index(None, "status", "claim_expires_at"),
    Index(None, "model_version"),
    Index(None, "claimed_by"),
)

run = Table(
    "labeler_run",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("command", String(32), nullable=False),
    Column("worker", String(64), nullable=False),
    Column("model_version", String(128)),
    Column("status", String(16), nullable=False, server_default="running"),
    Column("started_at", DateTime(), nullable=False),
    Column("finished_at", DateTime()),
    Column("discovered", Integer, nullable=False, server_default="0"),
    Column("labelled", Integer, nullable=False, server_default="0"),
    Column("needs_review", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("released", Integer, nullable=False, server_default="0"),
    Column(
        "lost",
        Integer,
        nullable=False,
        server_default="0",
        comment="results dropped because the claim was lost",
    ),
    Column("errors", Text),
    Index(None, "started_at"),
)
