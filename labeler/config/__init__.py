"""Configuration and its safe display: the one ``Settings`` class (``LABELER_`` variables), secret
redaction, logging set-up. May import ``labeler.core`` only.
"""
