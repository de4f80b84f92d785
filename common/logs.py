"""Logging set-up: plain text for people, JSON lines for log collectors.

Records carry identifiers (``job_id``, ``study_instance_uid``, ``delivery_id``): the code that works
on a job, study or delivery (the worker's tasks, the sender, the assembler) sets them for the
duration of that work with :func:`log_context` (context variables, so each thread and task has
its own), and :class:`ContextFilter` on the handler adds them to every record written meanwhile,
whichever logger wrote it; ``extra=`` still wins. No patient data is logged by default (names, IDs
and birth dates never go into log messages; UIDs are not patient identifiers).

:class:`RepeatedFailures` keeps one failing peer from filling the log: the first failure of a
kind at ERROR, then one summary line per window instead of each repeat, and a line when it
recovers.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["configure_logging", "JsonFormatter", "TextFormatter", "escape_control", "CONTEXT_FIELDS",
           "log_context", "current_context", "ContextFilter", "RepeatedFailures"]

CONTEXT_FIELDS = ("job_id", "study_instance_uid", "delivery_id", "calling_ae_title", "worker")


_CONTEXT: contextvars.ContextVar[dict[str, object] | None] = contextvars.ContextVar("medrega_log_context",
                                                                                   default=None)


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Within the block, every record carries ``fields`` (those of :data:`CONTEXT_FIELDS`; None
    values are left out) besides those of enclosing blocks."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"not a log context field: {', '.join(sorted(unknown))}")
    token = _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current_context() -> dict[str, object]:
    """The fields :func:`log_context` set for the running code."""
    return dict(_CONTEXT.get() or {})


class ContextFilter(logging.Filter):
    """Adds the :func:`log_context` fields to each record that lacks them (on the handler, so
    records of every logger, Celery's and the libraries' included, get them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


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
    """One handler on the root logger, to stderr, in ``fmt`` (``text`` or ``json``); Python
    warnings go through it too (``logging.captureWarnings``), so in JSON nothing else is written."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    for noisy in ("highdicom", "pynetdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@dataclass
class _Run:
    first: float
    window_start: float
    failures: int = 1
    unreported: int = 0
    last: str = ""


class RepeatedFailures:
    """Failures of one peer (``key``: a destination), logged without repeating them.

    :meth:`failed` logs the first failure of a ``kind`` (``"ECONNREFUSED"``, ``"0xA700"``) for a
    key at ERROR; later ones of that kind are counted, and once ``window_s`` has passed since the
    last line the next one writes a summary ("12 more failures to PACS1 in the last 60 s; last:
    ..."). :meth:`succeeded` writes one line when a key that was failing works again (with the
    count not yet reported) and starts afresh. Thread-safe; one per process.
    """

    def __init__(self, logger: logging.Logger, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger, self._window_s, self._clock = logger, window_s, clock
        self._runs: dict[tuple[str, str], _Run] = {}
        self._lock = threading.Lock()

    def failed(self, key: str, kind: str, message: str, what: str = "failures") -> None:
        with self._lock:
            now = self._clock()
            run = self._runs.get((key, kind))
            if run is None:
                self._runs[(key, kind)] = _Run(first=now, window_start=now, last=message)
                line: str | None = message
            else:
                run.failures += 1
                run.unreported += 1
                run.last = message
                line = None
                if now - run.window_start >= self._window_s:
                    line = (f"{run.unreported} more {what} to {key} in the last "
                            f"{now - run.window_start:.0f} s; last: {message}")
                    run.unreported, run.window_start = 0, now
        if line is not None:
            self._logger.error("%s", line)

    def succeeded(self, key: str, message: str) -> None:
        with self._lock:
            runs = [(kind, self._runs.pop((k, kind))) for k, kind in list(self._runs) if k == key]
            now = self._clock()
        if not runs:
            return
        failures = sum(run.failures for _, run in runs)
        unreported = sum(run.unreported for _, run in runs)
        since = now - min(run.first for _, run in runs)
        kinds = ", ".join(sorted(kind for kind, _ in runs))
        self._logger.warning("%s recovered: %s after %d failures (%s) in %.0f s%s", key, message, failures,
                             kinds, since, f", {unreported} of them not logged before" if unreported else "")

    def failing(self) -> dict[str, int]:
        """Keys failing now, with their failures counted since the first."""
        with self._lock:
            out: dict[str, int] = {}
            for (key, _), run in self._runs.items():
                out[key] = out.get(key, 0) + run.failures
            return out
