"""Deliveries (documents sent to destinations) and jobs, listed newest first with cursors."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from common.models import Delivery, DeliveryState, Document, Job, JobState, Study, as_utc
from .pagination import after_cursor, encode_cursor
from .query_studies import delivery_out
from .schemas import DeliveryOut, JobOut

__all__ = ["DeliveryFilters", "list_deliveries", "list_jobs"]


@dataclass(frozen=True)
class DeliveryFilters:
    state: str | None = None
    destination_name: str | None = None
    study_instance_uid: str | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None

    def as_query(self) -> str:
        out = {k: (as_utc(v).isoformat() if isinstance(v, dt.datetime) else v)
               for k, v in asdict(self).items() if v not in (None, "")}
        return json.dumps(out, sort_keys=True, ensure_ascii=False)


def list_deliveries(
    session: Session, filters: DeliveryFilters, *, limit: int, cursor: str | None
) -> tuple[list[DeliveryOut], str | None]:
    f = filters
    stmt = (
        select(Delivery, Document, Study.study_instance_uid)
        .join(Document, Document.id == Delivery.document_id)
        .join(Job, Job.id == Document.job_id)
        .join(Study, Study.id == Job.study_id)
        .options(selectinload(Delivery.attempts_log))
    )
    if f.state:
        stmt = stmt.where(Delivery.state == DeliveryState(f.state))
    if f.destination_name:
        stmt = stmt.where(Delivery.destination_name == f.destination_name)
    if f.study_instance_uid:
        stmt = stmt.where(Study.study_instance_uid == f.study_instance_uid)
    if f.created_from is not None:
        stmt = stmt.where(Delivery.created_at >= f.created_from)
    if f.created_to is not None:
        stmt = stmt.where(Delivery.created_at < f.created_to)
    keyset = after_cursor(Delivery.created_at, Delivery.id, cursor)
    if keyset is not None:
        stmt = stmt.where(keyset)
    rows = session.execute(
        stmt.order_by(Delivery.created_at.desc(), Delivery.id.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [delivery_out(dl, doc, uid) for dl, doc, uid in rows]
    next_cursor = encode_cursor(rows[-1][0].created_at, rows[-1][0].id) if more and rows else None
    return items, next_cursor


def list_jobs(
    session: Session, states: Sequence[JobState], *, limit: int, cursor: str | None
) -> tuple[list[JobOut], str | None]:
    """Jobs in ``states`` (all when empty), most recently changed first."""
    stmt = select(Job, Study.study_instance_uid).join(Study, Study.id == Job.study_id)
    if states:
        stmt = stmt.where(Job.state.in_(list(states)))
    keyset = after_cursor(Job.updated_at, Job.id, cursor)
    if keyset is not None:
        stmt = stmt.where(keyset)
    rows = session.execute(
        stmt.order_by(Job.updated_at.desc(), Job.id.desc()).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        JobOut(id=j.id, study_instance_uid=uid, study_version=j.study_version,
               state=JobState(j.state).value, attempts=j.attempts, error=j.error,
               created_at=j.created_at, updated_at=j.updated_at, worker=j.worker)
        for j, uid in rows
    ]
    next_cursor = encode_cursor(rows[-1][0].updated_at, rows[-1][0].id) if more and rows else None
    return items, next_cursor
