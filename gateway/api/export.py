"""Streamed exports (CSV or JSON) of findings and of the audit log.

Rows come from a server-side cursor in batches and leave as they are encoded, so an export of a
million findings needs neither a million-row list in memory nor a long wait for the first byte.
The read and its audit event share one transaction, opened by the stream itself: the event is
added when the stream ends (``success``) or is cut short (``incomplete``: the client went away, or
``error``), with the number of rows sent, and committed with it.

A CSV may begin with a UTF-8 byte-order mark (``bom``): without it Excel reads the file in the
system's code page and garbles Chinese text; with it Excel reads UTF-8 (the mark is the Unicode
standard's U+FEFF, three bytes EF BB BF in UTF-8).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import Any, Literal, get_args

import anyio
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from common import audit
from common.models import utcnow
from .auth import Principal

__all__ = ["ExportFormat", "EXPORT_FORMATS", "MEDIA_TYPES", "UTF8_BOM", "stream_export", "csv_cell"]

log = logging.getLogger(__name__)

ExportFormat = Literal["csv", "json"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}

#: U+FEFF encoded in UTF-8: tells Excel the CSV is UTF-8.
UTF8_BOM = "\ufeff".encode("utf-8")

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """One CSV cell. Text that a spreadsheet would run as a formula gets a leading apostrophe
    (OWASP "CSV injection"); lists are written as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _encode_csv(models: Sequence[BaseModel], columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    for m in models:
        data = m.model_dump()
        writer.writerow([csv_cell(data.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8")


def _chunks(
    factory: sessionmaker[Session],
    batches: Callable[[Session], Generator[list[Any], None, None]],
    fmt: ExportFormat,
    columns: Sequence[str],
    principal: Principal,
    action: str,
    query: str,
    bom: bool = False,
) -> Generator[bytes, None, None]:
    session = factory()
    n = 0
    outcome = "incomplete"
    source = batches(session)
    try:
        if fmt == "csv":
            yield (UTF8_BOM if bom else b"") + _encode_csv_header(columns)
        else:
            yield b"["
        for batch in source:
            if fmt == "csv":
                chunk = _encode_csv(batch, columns)
            else:
                parts = [m.model_dump_json().encode("utf-8") for m in batch]
                chunk = (b"," if n else b"") + b",".join(parts)
            n += len(batch)  # counted as sent once handed to the server
            yield chunk
        if fmt == "json":
            yield b"]"
        outcome = "success"
    except GeneratorExit:
        raise
    except Exception:
        outcome = "error"
        log.exception("export %s failed after %d rows", action, n)
        raise
    finally:
        source.close()  # closes the server-side cursor before the audit insert
        try:
            audit.record(session, actor=principal.name, role=principal.role, action=action,
                         query=query, rows=n, outcome=outcome)
            session.commit()
        except Exception:
            log.exception("could not record the audit event of export %s", action)
            session.rollback()
        finally:
            session.close()


def _encode_csv_header(columns: Sequence[str]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(columns)
    return buf.getvalue().encode("utf-8")


async def _in_worker_threads(chunks: Generator[bytes, None, None]) -> AsyncIterator[bytes]:
    """Drive the blocking generator from worker threads; always close it (in a thread)."""
    try:
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, None)  # None: no more (chunks are bytes)
            if chunk is None:
                break
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(chunks.close)


def stream_export(
    factory: sessionmaker[Session],
    batches: Callable[[Session], Generator[list[Any], None, None]],
    *,
    fmt: ExportFormat,
    columns: Sequence[str],
    principal: Principal,
    action: str,
    query: str,
    filename_stem: str,
    bom: bool = False,
) -> StreamingResponse:
    """A response streaming ``batches(session)`` as CSV or JSON, audited as ``action``; a CSV
    starts with a byte-order mark when ``bom`` (ignored for JSON, which has none, RFC 8259 8.1)."""
    chunks = _chunks(factory, batches, fmt, columns, principal, action, query, bom and fmt == "csv")
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        _in_worker_threads(chunks),
        media_type=MEDIA_TYPES[fmt],
        headers={
            "Content-Disposition": f'attachment; filename="{filename_stem}-{stamp}.{fmt}"',
            "Cache-Control": "no-store",
        },
    )
