"""Reading the audit log (never changing it: there is no such function anywhere)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Generator
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from common.models import AuditEvent, as_utc
from .pagination import after_cursor, encode_cursor
from .schemas import AuditEventOut

__all__ = ["AuditFilters", "list_audit_events", "iter_audit_events", "AUDIT_EXPORT_COLUMNS"]

AUDIT_EXPORT_COLUMNS = ["id", "at", "actor", "role", "action", "query", "rows", "outcome",
                        "study_instance_uid"]


@dataclass(frozen=True)
class AuditFilters:
    actor: str | None = None
    action: str | None = None
    study_instance_uid: str | None = None
    at_from: dt.datetime | None = None
    at_to: dt.datetime | None = None

    def as_query(self) -> str:
        out = {k: (as_utc(v).isoformat() if isinstance(v, dt.datetime) else v)
               for k, v in asdict(self).items() if v not in (None, "")}
        return json.dumps(out, sort_keys=True, ensure_ascii=False)


def _statement(f: AuditFilters, cursor: str | None) -> Select[Any]:
    stmt = select(AuditEvent)
    if f.actor:
        stmt = stmt.where(AuditEvent.actor == f.actor)
    if f.action:
        stmt = stmt.where(AuditEvent.action == f.action)
    if f.study_instance_uid:
        stmt = stmt.where(AuditEvent.study_instance_uid == f.study_instance_uid)
    if f.at_from is not None:
        stmt = stmt.where(AuditEvent.at >= f.at_from)
    if f.at_to is not None:
        stmt = stmt.where(AuditEvent.at < f.at_to)
    keyset = after_cursor(AuditEvent.at, AuditEvent.id, cursor)
    if keyset is not None:
        stmt = stmt.where(keyset)
    return stmt.order_by(AuditEvent.at.desc(), AuditEvent.id.desc())


def _out(ev: AuditEvent) -> AuditEventOut:
    return AuditEventOut(id=ev.id, at=ev.at, actor=ev.actor, role=ev.role,
                         action=ev.action, query=ev.query, rows=ev.rows, outcome=ev.outcome,
                         study_instance_uid=ev.study_instance_uid)


def list_audit_events(
    session: Session, filters: AuditFilters, *, limit: int, cursor: str | None
) -> tuple[list[AuditEventOut], str | None]:
    rows = session.scalars(_statement(filters, cursor).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].at, rows[-1].id) if more and rows else None
    return [_out(r) for r in rows], next_cursor


def iter_audit_events(
    session: Session, filters: AuditFilters, *, batch_size: int = 1000
) -> Generator[list[AuditEventOut], None, None]:
    result = session.scalars(_statement(filters, None), execution_options={"yield_per": batch_size})
    try:
        for rows in result.partitions():
            yield [_out(r) for r in rows]
    finally:
        result.close()
