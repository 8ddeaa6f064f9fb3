"""Text from the outside world (HTTP reason phrases, file names, exception messages) made
storable in any of the supported databases.

PostgreSQL rejects a NUL byte in text and the whole transaction with it; MariaDB in strict
mode rejects strings its column cannot hold; lone surrogates (undecodable file names) are not
valid UTF-8 anywhere. Every text labeler stores goes through :func:`storable_text` (one
line: reasons, references) or :func:`storable` (may keep line breaks and tabs: run errors,
labels, context).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators: they either
# break storage (NUL) or make a one-line reason render as several lines in staff tools.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# The same, keeping tabs and line breaks (a run's errors are one per line).
_CONTROL_BUT_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]+")
# Lone surrogates (undecodable file names) are not valid UTF-8; non-characters are refused by
# some drivers.
_UNSTORABLE = re.compile("[\ud800-\udfff\ufdd0-\ufdef\ufffe\uffff]")
_ELLIPSIS = "..."


def storable_text(text: object, limit: int = 1000, *, keep_lines: bool = False) -> str:
    """``text`` as one line of valid UTF-8 without control characters, at most ``limit`` chars.

    Bytes are decoded as UTF-8 (invalid sequences become U+FFFD); runs of control characters
    become one space (with ``keep_lines``, tabs and line breaks stay); lone surrogates and
    non-characters become U+FFFD; a text over the limit is cut and ends in ``...``.
    """
    if limit < len(_ELLIPSIS) + 1:
        raise ValueError(f"limit must be at least {len(_ELLIPSIS) + 1}, got {limit}")
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    # Bound the work before any per-character pass: the caller never keeps more than this.
    text = text[: limit * 2 + 16]
    text = _UNSTORABLE.sub("\ufffd", text)
    text = (_CONTROL_BUT_LINES if keep_lines else _CONTROL).sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - len(_ELLIPSIS)].rstrip() + _ELLIPSIS
    return text


def storable(text: object | None, limit: int) -> str | None:
    """:func:`storable_text` keeping line breaks, for a value that may be absent (NULL)."""
    if text is None:
        return None
    return storable_text(text, limit, keep_lines=True)


def id_list(ids: Sequence[str], limit: int) -> str:
    """Comma-separated ids within ``limit`` characters, never cut inside an id: when they do
    not all fit, as many as fit and ``,... (+N more)``."""

    def text(kept: Sequence[str]) -> str:
        rest = len(ids) - len(kept)
        more = f"... (+{rest} more)" if rest else ""
        return ",".join([*kept, more] if kept and more else [*kept] or [more])

    kept: list[str] = []
    for value in ids:
        if len(text([*kept, value])) > limit:
            break
        kept.append(value)
    return text(kept)[:limit]


def error_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an error (of the driver's own error for a wrapped DBAPI error), at
    most ``limit`` characters; the error's type name when it has no message.

    Driver messages can be long and multi-line; the first line carries the reason. Whoever
    prints it still passes it through the redacting filter: a driver may echo connection
    details."""
    source = getattr(exc, "orig", None) or exc
    lines = str(source).strip().splitlines()
    return (lines[0] if lines else type(source).__name__)[:limit]
