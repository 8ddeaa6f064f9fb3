"""Log output: human-readable lines by default, one JSON object per line for log collectors
(``LABELER_LOG_FORMAT=json``). Either way every record passes the password-redacting filter
first.

Structured fields travel as ``extra=`` on the log call (``run_id``, the counts, ``photo_id``);
the text format leaves them out (the message says it in words), the JSON format adds each as
a key."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from labeler.config.redact import STANDARD_RECORD_ATTRS, RedactingFilter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record."""
    return {k: v for k, v in vars(record).items() if k not in STANDARD_RECORD_ATTRS}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, then the
    record's structured fields; a traceback, when there is one, as ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(
    level: str, secrets: list[str], fmt: str = "text", stream: IO[str] | None = None
) -> None:
    """Route every logger to one stderr handler: redaction first, then the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("apscheduler.executors", "apscheduler.scheduler", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def summary_fields(summary: Any) -> dict[str, Any]:
    """A pass summary as structured log fields (``extra=``)."""
    return {
        "run_id": summary.run_id,
        "run_status": summary.status,
        "discovered": summary.discovered,
        "labelled": summary.labelled,
        "needs_review": summary.needs_review,
        "failed": summary.failed,
        "released": summary.released,
        "lost": summary.lost,
        "seconds": round(summary.seconds, 3),
        "model_version": summary.model_version,
    }
