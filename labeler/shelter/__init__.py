"""The shelter's own tables as labeler sees them: the photo source (``source``), the animal's
record written back to (``target``: reflected with its breed map, stamps and undecided values),
the breed map and the shelter's breed table. May import ``labeler.core``, ``labeler.config``,
``labeler.decide``, ``labeler.model``.
"""
