"""The one rule for SQL names that come from configuration.

Configuration names tables and columns, and those are the only things labeler does not pass
as bound parameters, so each must be a plain identifier. Always anchored with ``\\Z``, never
``$``: ``$`` accepts a trailing newline (``"animals\\n"``).
"""

from __future__ import annotations

import re

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def is_identifier(name: str) -> bool:
    """Whether ``name`` is a plain SQL identifier (letters, digits, _; at most 63 characters)."""
    return IDENTIFIER.match(name) is not None
