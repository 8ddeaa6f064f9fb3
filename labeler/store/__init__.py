"""labeler's own tables and everything that talks SQL for a pass: the engine and its retries, the
schema and Alembic migrations, labeler's statements on its own tables and reads of the source
(``repository``), the key comparisons they share (``keys``), every statement that writes to
the shelter's own tables (``shelter_sql``, small enough to review line by line), the
per-animal decisions and their write-back (``writeback``), and the ``Store`` seam a pass runs
against. Its functions take the caller's session and never commit. May import every layer
below ``labeler.labelling``.
"""
