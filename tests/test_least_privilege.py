"""The whole pass runs as a PostgreSQL role with only the privileges the README lists."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from labeler.config.settings import Settings
from labeler.service.app import Service
from labeler.store.schema import FAILED, LABELLED, NEEDS_REVIEW, photo
from tests.helpers import fresh_database
from tests.test_processes import seed

# The statements README.md documents, for a role called labeler_app.
GRANTS = """
GRANT SELECT ON animals TO {role};
GRANT UPDATE (breed, breed_confidence) ON animals TO {role};
GRANT SELECT, INSERT, UPDATE ON labeler_photo, labeler_run TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON labeler_threshold TO {role};
GRANT USAGE ON SEQUENCE labeler_run_id_seq TO {role};
GRANT SELECT ON labeler_alembic_version, labeler_review_queue TO {role};
"""


def test_pass_as_a_restricted_role(tmp_path: Path, tiny_artifact: Path) -> None:
    role = f"labeler_app_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    with fresh_database("postgresql", tmp_path) as owner_url:
        seed(owner_url, 60)
        owner = create_engine(owner_url)
        with owner.begin() as conn:
            # DDL takes no bound parameters; the password is hex from uuid4.
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
            for statement in GRANTS.format(role=role).strip().splitlines():
                conn.execute(text(statement))
            conn.execute(text("UPDATE animals SET photo = 'garbage' WHERE id = 60"))
        try:
            url = make_url(owner_url).set(username=role, password=password)
            settings = Settings(
                database_url=url.render_as_string(hide_password=False),
                source_table="animals",
                source_image_column="photo",
                writeback_breed_column="breed",
                writeback_confidence_column="breed_confidence",
                model_dir=tiny_artifact,
                batch_size=16,
            )
            service = Service.build(settings)
            assert "source animals readable" in service.probe()
            summary = service.run_pass()
            assert summary.status == "finished" and summary.processed == 60
            with service.engine.connect() as conn:
                counts = dict(
                    conn.execute(
                        select(photo.c.status, func.count()).group_by(photo.c.status)
                    ).all()
                )
                written = conn.execute(
                    text("SELECT COUNT(*) FROM animals WHERE breed IS NOT NULL")
                ).scalar()
            assert (
                counts.get(LABELLED, 0) + counts.get(NEEDS_REVIEW, 0) == 59 and counts[FAILED] == 1
            )
            assert written == counts.get(LABELLED, 0)
            # The role really is restricted: these would succeed with more privileges.
            for forbidden in (
                "UPDATE animals SET name = 'x' WHERE id = 1",
                "DELETE FROM labeler_photo",
                "CREATE TABLE labeler_extra (id int)",
            ):
                with (
                    pytest.raises(ProgrammingError, match="permission denied"),
                    service.engine.begin() as conn,
                ):
                    conn.execute(text(forbidden))
            service.engine.dispose()
        finally:
            with owner.begin() as conn:
                conn.execute(text(f"DROP OWNED BY {role}"))
                conn.execute(text(f"DROP ROLE {role}"))
            owner.dispose()
