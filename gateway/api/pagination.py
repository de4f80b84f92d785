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

__all__ = ["InvalidCursorError", "encode_cursor", "decode_cursor", "after_cursor"]


class InvalidCursorError(ValueError):
    """The ``cursor`` parameter was not produced by this API."""


def encode_cursor(at: dt.datetime, row_id: int) -> str:
    """``at`` is a database timestamp (aware UTC, :class:`common.models.UTCDateTime`)."""
    raw = f"{at.isoformat(timespec='microseconds')}|{row_id}".encode("ascii")
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
    # A row-value comparison lets PostgreSQL seek the (at, id) index to the cursor; the redundant
    # ``at <= :at`` gives any planner a plain range on the index's first column. The cursor's
    # values are bound with the columns' types, so ``at`` is stored-form UTC whatever its zone.
    return and_(at_column <= at, tuple_(at_column, id_column) < (at, row_id))
