"""Alembic environment: migrates only the labeler's own tables (prefix ``labeler_``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from labeler.store.schema import PREFIX, VERSION_TABLE, metadata


def include_object(obj, name, type_, reflected, compare_to):  # type: ignore[no-untyped-def]
    # The association's own tables live in the same database: never compare or touch them.
    if type_ == "table":
        return bool(name) and name.startswith(PREFIX)
    return True


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=include_object,
        compare_type=True,
        render_as_batch=True,  # SQLite can only ALTER through table copies
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    # Called by the plain `alembic` command: build the engine from the labeler's settings.
    from labeler.config.settings import load_settings
    from labeler.store.engine import make_engine

    engine = make_engine(load_settings())
    with engine.connect() as conn:
        run(conn)
        conn.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
main()
