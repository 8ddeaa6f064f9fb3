"""Keeping database credentials out of everything the labeler prints or logs.

A URL carries secrets in two places: the password and some query parameters
(``?password=``, ``?sslpassword=``, ...). Both are masked in rendered URLs, and every form of
their values (raw and percent-encoded) is scrubbed from log records and error messages."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL

if TYPE_CHECKING:
    from labeler.config.settings import Settings

MASK = "***"

# Query parameter names that carry a credential or point at key material, in any driver's
# spelling (libpq: password, sslpassword, sslkey; MySQL drivers: passwd, ssl_key; ODBC: pwd).
_CREDENTIAL_WORDS = ("pass", "pwd", "secret", "token", "key", "credential", "auth")

# What every LogRecord has; anything else on a record came from a call's ``extra=``.
STANDARD_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

# Shorter values would mask ordinary words all over the logs; such a password is not a secret.
_MIN_SECRET_LENGTH = 3


def is_credential_key(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _CREDENTIAL_WORDS)


def url_secrets(url: URL) -> list[str]:
    """Every secret in ``url``, in the forms it may appear in text, longest first."""
    values: list[str] = []
    if url.password:
        values.append(str(url.password))
    for name, value in url.query.items():
        if is_credential_key(name):
            values.extend([value] if isinstance(value, str) else list(value))
    forms: set[str] = set()
    for value in values:
        forms |= {value, quote(value, safe=""), quote_plus(value)}
    return sorted((f for f in forms if len(f) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def safe_url(url: URL) -> str:
    """``url`` for display: password and credential query parameters masked."""
    masked = {
        name: (MASK if is_credential_key(name) else value) for name, value in url.query.items()
    }
    rendered = url.set(query=masked).render_as_string(hide_password=True)
    return rendered.replace(quote(MASK, safe=""), MASK)


def secrets_of(settings: Settings) -> list[str]:
    return url_secrets(settings.url)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in every record, whatever library logged it: the message, the traceback
    and any structured ``extra=`` field that holds text."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        cleaned = redact(message, self.secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info), self.secrets
            )
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for name, value in list(vars(record).items()):
            if name not in STANDARD_RECORD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value, self.secrets))
        return True
