"""Log lines: an ISO timestamp (UTC, milliseconds) and the level on each, as text or
as one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

__all__ = ["LOG_FORMATS", "configure"]

LOG_FORMATS = ("text", "json")


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        return line + (f"\n{self.formatException(record.exc_info)}" if record.exc_info else "")


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format: str = "text", level: int = logging.WARNING) -> None:
    """The root handler's format, and eventsched's level."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: {' or '.join(LOG_FORMATS)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(_Json() if log_format == "json" else _Text())
    logging.getLogger("eventsched").setLevel(level)
