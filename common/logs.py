"""Logging set-up: plain text for people, JSON lines for log collectors.

Records carry identifiers (``job_id``, ``study_instance_uid``, ``delivery_id``) when the code passes
them as ``extra``; no patient data is logged by default (names, IDs and birth dates never go into
log messages; UIDs are not patient identifiers).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re

__all__ = ["configure_logging", "JsonFormatter", "TextFormatter", "escape_control", "CONTEXT_FIELDS"]

CONTEXT_FIELDS = ("job_id", "study_instance_uid", "delivery_id", "calling_ae_title", "worker")


#: C0 controls (line feed, carriage return, NUL, ESC ...), DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_control(text: str) -> str:
    """``text`` with every control character written as a Python escape (``\\n``, ``\\x00``),
    so that a value from the network (a UID, an AE title) can never start a forged log line or
    send terminal escapes. Plain text is returned as it is (the common case costs one search)."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


class TextFormatter(logging.Formatter):
    """The text format for people; the message (with every value formatted into it) is passed
    through :func:`escape_control`, so one record is one line (a traceback follows on its own
    lines)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = escape_control(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape_control(record.getMessage()),  # DEL and C1 too, which JSON leaves
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("highdicom", "pynetdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
