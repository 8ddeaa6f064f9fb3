"""Keeping the database password out of everything the labeler prints or logs."""

from __future__ import annotations

import logging
from urllib.parse import quote, quote_plus

from labeler.settings import Settings

MASK = "***"


def secrets_of(settings: Settings) -> list[str]:
    password = settings.url.password
    if not password:
        return []
    forms = {str(password), quote(str(password), safe=""), quote_plus(str(password))}
    return sorted((f for f in forms if len(f) >= 3), key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in every record, whatever library logged it."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            cleaned = redact(message, self.secrets)
            if cleaned != message:
                record.msg, record.args = cleaned, None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = redact(
                    logging.Formatter().formatException(record.exc_info), self.secrets
                )
                record.exc_info = None
        return True
