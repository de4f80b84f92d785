"""Deliveries (documents sent to destinations) and jobs, listed newest first with cursors.

For the API, the CLI (``deliveries list``) and the pages alike:

- :func:`list_deliveries` (:class:`DeliveryFilters`: state(s), destination, study, created from/to)
  gives :class:`~gateway.api.schemas.DeliveryOut` rows with each attempt's exact error, the state
  changes with why (``events``) and ``last_error``, newest first, with a cursor;
- :func:`get_delivery` one delivery by id;
- :func:`delivery_counts` deliveries per destination and state (a destinations or health page);
- :func:`list_jobs` jobs by state.

Changes go through :mod:`workflow.deliveries` (``retry``, ``cancel``), whose rules all share.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from common.models import Delivery, DeliveryState, Document, Job, JobState, Study, as_utc
from .pagination import after_cursor, encode_cursor
from .query_studies import delivery_out
from .schemas import DeliveryOut, JobOut

__all__ = ["DeliveryFilters", "list_deliveries", "get_delivery", "delivery_counts", "parse_states", "list_jobs"]


@dataclass(frozen=True)
class DeliveryFilters:
    """``state``: one state or several, comma-separated (``"failed,cancelled"``); values of
    :class:`~common.models.DeliveryState` (a wrong one raises ValueError)."""

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
        .options(selectinload(Delivery.attempts_log), selectinload(Delivery.events))
    )
    if f.state:
        stmt = stmt.where(Delivery.state.in_(parse_states(f.state)))
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


def parse_states(text: str) -> list[DeliveryState]:
    """``"failed,cancelled"`` as states; ValueError naming the allowed ones for a wrong value."""
    out = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        try:
            out.append(DeliveryState(word))
        except ValueError:
            raise ValueError(f"unknown delivery state {word!r}; one of "
                             f"{', '.join(s.value for s in DeliveryState)}") from None
    return out


def get_delivery(session: Session, delivery_id: int) -> DeliveryOut | None:
    """One delivery with its attempts and state changes, or None."""
    row = session.execute(
        select(Delivery, Document, Study.study_instance_uid)
        .join(Document, Document.id == Delivery.document_id)
        .join(Job, Job.id == Document.job_id)
        .join(Study, Study.id == Job.study_id)
        .where(Delivery.id == delivery_id)
        .options(selectinload(Delivery.attempts_log), selectinload(Delivery.events))
    ).first()
    return delivery_out(*row) if row is not None else None


def delivery_counts(session: Session) -> dict[str, dict[str, int]]:
    """Destination name -> state -> number of deliveries (every destination that has any)."""
    out: dict[str, dict[str, int]] = {}
    for name, state, count in session.execute(
        select(Delivery.destination_name, Delivery.state, func.count()).group_by(Delivery.destination_name,
                                                                                  Delivery.state)
    ):
        out.setdefault(name, {})[DeliveryState(state).value] = count
    return out


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
