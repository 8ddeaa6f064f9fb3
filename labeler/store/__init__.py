"""labeler's own tables and everything that talks SQL for a pass. Its functions take the
caller's session and never commit. May import every layer below ``labeler.labelling``.

Inside, by the tables they touch and by risk (each module imports only those below it):

- ``seam``: the ``Store`` a pass runs against, one session per transaction, retries;
- ``staff`` (what staff decide, in the shelter's screens or on labeler's side) and
  ``check_sql`` (the database side of ``labeler check``);
- ``writeback``: per-animal decisions and their write-back to the shelter's record;
- ``discovery`` (new photos, vanished and merged ones), ``results`` (a batch's results,
  ``relabel``), ``reports`` (what ``status`` shows), ``evidence`` (staff's verdicts for
  ``calibrate`` and ``adapt``, learned thresholds);
- ``animals`` (labeler_group), ``claims`` and ``runs`` (labeler_photo's claims, labeler_run),
  ``source_rows`` (reads of the shelter's source);
- ``shelter_sql``: every statement that writes to the shelter's own tables, small enough to
  review line by line;
- ``keys`` (how ids and keys compare on each server), ``engine`` (connections, retries,
  SQLite pragmas), ``schema`` and ``migrate`` (labeler's tables, Alembic).
"""
