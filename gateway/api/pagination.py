"""Keyset (cursor) pagination on ``(timestamp, id)``, newest first.

A cursor names the last row of a page; the next page starts strictly after it in the order
``timestamp DESC, id DESC``, which an index on ``(timestamp, id)`` serves without OFFSET scans.
Cursors are opaque to clients (URL-safe base64) and carry no patient data.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt

from sqlalchemy import ColumnElement, and_, tuple_
from sqlalchemy.orm import InstrumentedAttribute

__all__ = ["InvalidCursorError", "encode_cursor", "decode_cursor", "after_cursor", "as_utc", "to_db"]


class InvalidCursorError(ValueError):
    """The ``cursor`` parameter was not produced by this API."""


def as_utc(value: dt.datetime) -> dt.datetime:
    """Database timestamps as aware UTC (SQLite returns naive values that are UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def to_db(value: dt.datetime) -> dt.datetime:
    """A client's timestamp for comparison with stored UTC (naive input is taken as UTC)."""
    return as_utc(value)


def encode_cursor(at: dt.datetime, row_id: int) -> str:
    raw = f"{as_utc(at).isoformat(timespec='microseconds')}|{row_id}".encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        at_text, id_text = raw.split("|")
        at = dt.datetime.fromisoformat(at_text)
        row_id = int(id_text)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursorError("cursor is not valid: use next_cursor from a previous page") from exc
    if at.tzinfo is None or row_id < 0:
        raise InvalidCursorError("cursor is not valid: use next_cursor from a previous page")
    return at, row_id


def after_cursor(
    at_column: InstrumentedAttribute[dt.datetime],
    id_column: InstrumentedAttribute[int],
    cursor: str | None,
) -> ColumnElement[bool] | None:
    """The condition "comes after ``cursor``" in ``(at DESC, id DESC)`` order, or None."""
    if not cursor:
        return None
    at, row_id = decode_cursor(cursor)
    at = to_db(at)
    # A row-value comparison lets PostgreSQL seek the (at, id) index to the cursor; the redundant
    # ``at <= :at`` gives any planner a plain range on the index's first column.
    return and_(at_column <= at, tuple_(at_column, id_column) < tuple_(at, row_id))
