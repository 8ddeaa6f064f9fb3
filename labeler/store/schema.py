"""The labeler's own tables. The association's tables are never described here: they are
reflected at run time from the configured names (see :mod:`labeler.shelter.source`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from labeler.core.domain import (  # noqa: F401  the statuses, re-exported beside the tables
    FAILED,
    GONE,
    LABELLED,
    NEEDS_REVIEW,
    PENDING,
    REVIEWED,
    STATUSES,
    PhotoStatus,
)

# Everything the labeler owns starts with this prefix, so migrations and `alembic check`
# can ignore the association's own tables in the same database.
PREFIX = "labeler_"
VERSION_TABLE = "labeler_alembic_version"
REVIEW_VIEW = "labeler_review_queue"

GROUP_REVIEW_VIEW = "labeler_group_review_queue"

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

# Source ids and group values, as text. They compare byte for byte on every server: under
# MariaDB's default (case-insensitive) collation 'Rex-1' and 'rex-1' would be one row, and
# under a PAD SPACE one (utf8mb4_bin included) 'Rex-1' and 'Rex-1 '.
ID_LENGTH = 255


def exact_collation(dialect: Dialect) -> str:
    """The MariaDB/MySQL collation that compares utf8mb4 text byte for byte, without padding."""
    if getattr(dialect, "is_mariadb", False):
        return "utf8mb4_nopad_bin"
    if (getattr(dialect, "server_version_info", None) or (0,)) >= (8, 0, 17):
        return "utf8mb4_0900_bin"
    return "utf8mb4_bin"  # older MySQL: still case-exact, but pads trailing spaces


class IdText(TypeDecorator[str]):
    """VARCHAR(255) that compares exactly (see :func:`exact_collation`)."""

    impl = String(ID_LENGTH)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            exact = mysql.VARCHAR(ID_LENGTH, charset="utf8mb4", collation=exact_collation(dialect))
            return dialect.type_descriptor(exact)
        return dialect.type_descriptor(String(ID_LENGTH))


photo = Table(
    "labeler_photo",
    metadata,
    Column("photo_id", IdText(), primary_key=True, comment="the source row's id, as text"),
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
    # audit sampling (migration 0002)
    Column(
        "audit",
        Integer,
        nullable=False,
        server_default="0",
        comment="1: a confident result sent to staff as a random audit; 0 otherwise",
    ),
    # migration 0003: which animal, which source, and scores to combine
    Column("group_id", IdText(), comment="the source's group column (the animal), as text"),
    Column("source_name", String(255), comment="table.id_column the row was read from"),
    Column("context", String(1000), comment="configured context columns, for reviewers"),
    Column("scores", Text, comment="JSON: top labels and log-probabilities, for combining"),
    # migration 0005: what was classified, to notice a photo replaced under the same id
    Column("fingerprint", String(64), comment="sha256 (hex) of the photo bytes classified"),
    Column(
        "change_marker",
        String(255),
        comment="LABELER_SOURCE_CHANGE_COLUMN's value (as text) when the photo was read",
    ),
    # migration 0008: what labeler adapt refits the head on, so it never reads a photo again
    Column(
        "features",
        LargeBinary,
        comment="the network's outputs for adapting (labeler.model.features), under 1 kB",
    ),
    CheckConstraint(
        "status IN ('pending', 'labelled', 'needs_review', 'failed', 'reviewed', 'gone')",
        name="status",
    ),
    Index(None, "status", "claim_expires_at"),
    Index(None, "model_version"),
    Index(None, "claimed_by"),
    Index(None, "group_id"),
    Index(None, "source_name"),
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

# --- calibrated review thresholds (migration 0002) --------------------------------------------

threshold = Table(
    "labeler_threshold",
    metadata,
    Column("model_version", String(128), primary_key=True),
    Column("review_threshold", Confidence, nullable=False),
    Column("review_margin", Confidence),
    Column("target_precision", Confidence, nullable=False),
    Column(
        "precision_lower",
        Confidence,
        comment="lower confidence bound of precision at the threshold when it was set",
    ),
    Column("coverage", Confidence),
    Column("rows_used", Integer, nullable=False),
    Column("evidence", Text),
    Column("created_at", DateTime(), nullable=False),
    Column("created_by", String(128)),
    comment="review thresholds calibrated from this shelter's staff decisions",
)

# --- one answer per animal (migration 0003) ---------------------------------------------------

group = Table(
    "labeler_group",
    metadata,
    Column("group_id", IdText(), primary_key=True, comment="the animal: source group value"),
    Column("status", String(16), nullable=False, server_default=PENDING),
    Column("breed", String(128)),
    Column("confidence", Confidence),
    Column("breed_2", String(128)),
    Column("confidence_2", Confidence),
    Column("breed_3", String(128)),
    Column("confidence_3", Confidence),
    Column("photos_used", Integer, nullable=False, server_default="0"),
    Column("photo_ids", String(1000), comment="source ids of the photos combined"),
    Column("model_version", String(128)),
    Column("review_reason", String(255)),
    Column(
        "audit",
        Integer,
        nullable=False,
        server_default="0",
        comment="1: a confident answer sent to staff as an audit, never written back",
    ),
    Column("context", String(1000)),
    Column("written_values", String(1000), comment="JSON: what labeler last wrote to the target"),
    Column("written_at", DateTime()),
    Column("staff_values", String(1000), comment="JSON: a breed staff set in their own UI"),
    Column("staff_seen_at", DateTime()),
    Column("reviewed_breed", String(128), comment="set by staff; written to the target"),
    Column("reviewed_by", String(128)),
    Column("reviewed_at", DateTime()),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", String(1000)),
    Column("run_id", Integer),
    Column("discovered_at", DateTime(), nullable=False),
    Column("updated_at", DateTime(), nullable=False),
    Column("decided_at", DateTime()),
    # migration 0004: a reviewed breed that could not be written stays in the queue with why.
    Column(
        "refused_breed",
        String(128),
        comment="a reviewed_breed labeler could not write, as staff set it",
    ),
    Column("refusal", String(255), comment="why that reviewed breed failed"),
    # migration 0006: the top breeds in the shelter's vocabulary, for the review queue.
    *(
        Column(
            f"breed_name{suffix}",
            String(255),
            comment=f"{what} in the shelter's vocabulary (breed map), when decided",
        )
        for suffix, what in (("", "breed"), ("_2", "breed_2"), ("_3", "breed_3"))
    ),
    # migration 0007: a withdrawal restores what the record held, not only the undecided values.
    Column(
        "replaced_values",
        String(1000),
        comment="JSON: what the record held before labeler's first write",
    ),
    CheckConstraint(
        "status IN ('pending', 'labelled', 'needs_review', 'failed', 'reviewed', 'gone')",
        name="status",
    ),
    Index(None, "status"),
)
