"""The shelter's own tables as labeler sees them: the photo source, the breed map and the shelter's
breed table. May import ``labeler.core``, ``labeler.config``, ``labeler.decide``,
``labeler.model``.
"""
