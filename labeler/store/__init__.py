"""labeler's own tables and everything that talks SQL for a pass: the engine and its retries, the
schema and Alembic migrations, labeler's statements (``repository``), the per-animal write-back
into the shelter's record (``writeback``), and the ``Store`` seam a pass runs against. Its
functions take the caller's session and never commit. May import every layer below
``labeler.labelling``.
"""
