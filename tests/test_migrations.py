"""Migrations upgrade, check clean, and downgrade on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from sqlalchemy import inspect, text

from labeler.config.settings import Settings
from labeler.store import migrate
from labeler.store.engine import make_engine
from labeler.store.schema import REVIEW_VIEW, VERSION_TABLE
from tests.helpers import create_photos, png_bytes


def test_upgrade_check_downgrade(db_url: str) -> None:
    engine = make_engine(Settings(database_url=db_url))
    # The association's own table shares the database and must be left alone.
    create_photos(engine, "bytes", [{"id": 1, "name": "Rex", "photo": png_bytes((1, 2, 3))}])
    assert migrate.current_revision(engine) is None

    migrate.upgrade(engine)
    names = set(inspect(engine).get_table_names())
    assert {"labeler_photo", "labeler_run", VERSION_TABLE, "animals"} <= names
    assert REVIEW_VIEW in inspect(engine).get_view_names()
    assert migrate.current_revision(engine) == migrate.head_revision(engine)
    migrate.check(engine)  # raises if the models and the migrated schema disagree

    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT COUNT(*) FROM {REVIEW_VIEW}")).scalar() == 0

    migrate.downgrade(engine)
    inspector = inspect(engine)
    left = set(inspector.get_table_names()) | set(inspector.get_view_names())
    assert not {"labeler_photo", "labeler_run", REVIEW_VIEW} & left
    assert "animals" in left
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM animals")).scalar() == 1

    migrate.upgrade(engine)  # and back up again from a downgraded database
    assert migrate.current_revision(engine) == migrate.head_revision(engine)
    engine.dispose()
