"""Logging set-up: plain text for people, JSON lines for log collectors.

Records carry identifiers (``job_id``, ``study_instance_uid``, ``delivery_id``) when the code passes
them as ``extra``; no patient data is logged by default (names, IDs and birth dates never go into
log messages; UIDs are not patient identifiers).
"""

from __future__ import annotations

import datetime as dt
import json
import logging

__all__ = ["configure_logging", "JsonFormatter", "CONTEXT_FIELDS"]

CONTEXT_FIELDS = ("job_id", "study_instance_uid", "delivery_id", "calling_ae_title", "worker")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, context fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
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
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("highdicom", "pynetdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
