"""The auditors' findings search: filters, one keyset-paginated page, or every row for export.

One statement joins each finding to its model run (model, weights), image (series modality), job
and study (calling AE, study date). Pages are ordered newest first by ``(created_at, id)`` so the
``ix_findings_created_at_id`` index serves both the order and the date range; the job's delivery
status is looked up for the page's jobs only.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Generator, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Unpack

from sqlalchemy import Row, Select, and_, exists, select, text
from sqlalchemy.orm import Session

from common.models import (
    Delivery,
    DeliveryState,
    Document,
    Finding,
    Instance,
    Job,
    ModelRun,
    Series,
    Study,
    as_utc,
)
from .pagination import after_cursor, encode_cursor
from .schemas import FindingOut

__all__ = [
    "FindingFilters",
    "finding_rows_statement",
    "search_findings",
    "iter_findings",
    "delivery_status_by_job",
    "EXPORT_COLUMNS",
]


@dataclass(frozen=True)
class FindingFilters:
    """What an auditor may filter findings by (all optional, combined with AND)."""

    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    modality: str | None = None
    calling_ae_title: str | None = None
    label: str | None = None
    language: str | None = None
    model_name: str | None = None
    weights_id: str | None = None
    delivery_status: str | None = None
    study_instance_uid: str | None = None

    def as_query(self) -> str:
        """The non-empty filters as canonical JSON (what the audit event records)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None or value == "":
                continue
            out[key] = as_utc(value).isoformat() if isinstance(value, dt.datetime) else value
        return json.dumps(out, sort_keys=True, ensure_ascii=False)


def _jobs_with_delivery(state: DeliveryState | None) -> Select[Any]:
    """Ids of jobs that have a delivery (in ``state``); uncorrelated, so the planner can hash it
    once or drive the search from it (failed and pending deliveries are few)."""
    stmt = select(Document.job_id).join(Delivery, Delivery.document_id == Document.id)
    if state is not None:
        stmt = stmt.where(Delivery.state == state)
    return stmt


def _delivery_exists(state: DeliveryState | None) -> Any:
    """Correlated: does the finding's job have a delivery (in ``state``; None: any that was not
    cancelled, as :func:`delivery_status_by_job` counts them)?"""
    cond = [Document.job_id == Finding.job_id, Delivery.document_id == Document.id]
    cond.append(Delivery.state == state if state is not None else Delivery.state != DeliveryState.CANCELLED)
    return exists().where(*cond)


def _delivery_condition(status: str) -> Any:
    """``status`` as a condition on the finding's job (see :data:`schemas.DeliveryStatus`).

    Failed and pending deliveries are few: those searches start from the set of their jobs.
    Sent is the common case: checked per finding, so a page stops after its 50 rows."""
    if status == "failed":
        return Finding.job_id.in_(_jobs_with_delivery(DeliveryState.FAILED))
    if status == "pending":
        return and_(Finding.job_id.in_(_jobs_with_delivery(DeliveryState.PENDING)),
                    ~_delivery_exists(DeliveryState.FAILED))
    if status == "sent":
        return and_(_delivery_exists(DeliveryState.SENT), ~_delivery_exists(DeliveryState.FAILED),
                    ~_delivery_exists(DeliveryState.PENDING))
    if status == "none":
        return ~_delivery_exists(None)
    raise ValueError(f"unknown delivery status {status!r}")


def finding_rows_statement(filters: FindingFilters, cursor: str | None = None) -> Select[Unpack[tuple[Any, ...]]]:
    """SELECT of finding rows with their context, filtered, newest first."""
    stmt = (
        select(
            Finding.id,
            Finding.created_at,
            Finding.job_id,
            Finding.language,
            Finding.kind,
            Finding.label,
            Finding.code_value,
            Finding.code_scheme,
            Finding.code_meaning,
            Finding.text,
            Finding.box_x1, Finding.box_y1, Finding.box_x2, Finding.box_y2,
            Finding.px_x1, Finding.px_y1, Finding.px_x2, Finding.px_y2,
            Finding.referenced_sop_instance_uid,
            Finding.frame_number,
            Finding.unparsed,
            ModelRun.model_name,
            ModelRun.model_version,
            ModelRun.weights_id,
            ModelRun.window,
            Instance.sop_instance_uid,
            Series.modality,
            Job.study_version,
            Study.study_instance_uid,
            Study.study_date,
            Study.calling_ae_title,
            Study.patient_id,
            Study.patient_name,
            Study.accession_number,
        )
        .join(ModelRun, ModelRun.id == Finding.model_run_id)
        .join(Instance, Instance.id == ModelRun.instance_id)
        .join(Series, Series.id == Instance.series_id)
        .join(Job, Job.id == Finding.job_id)
        .join(Study, Study.id == Job.study_id)
    )
    f = filters
    if f.created_from is not None:
        stmt = stmt.where(Finding.created_at >= f.created_from)
    if f.created_to is not None:
        stmt = stmt.where(Finding.created_at < f.created_to)
    if f.modality:
        stmt = stmt.where(Series.modality == f.modality.strip().upper())
    if f.calling_ae_title:
        # As a set of jobs: a rarely used AE title drives the search from its few studies.
        stmt = stmt.where(Finding.job_id.in_(
            select(Job.id).join(Study, Study.id == Job.study_id)
            .where(Study.calling_ae_title == f.calling_ae_title.strip())))
    if f.label:
        stmt = stmt.where(Finding.label.icontains(f.label.strip(), autoescape=True))
    if f.language:
        stmt = stmt.where(Finding.language == f.language.strip())
    if f.model_name:
        stmt = stmt.where(ModelRun.model_name == f.model_name.strip())
    if f.weights_id:
        stmt = stmt.where(ModelRun.weights_id == f.weights_id.strip())
    if f.delivery_status:
        stmt = stmt.where(_delivery_condition(f.delivery_status))
    if f.study_instance_uid:
        stmt = stmt.where(Study.study_instance_uid == f.study_instance_uid.strip())
    keyset = after_cursor(Finding.created_at, Finding.id, cursor)
    if keyset is not None:
        stmt = stmt.where(keyset)
    return stmt.order_by(Finding.created_at.desc(), Finding.id.desc())


def delivery_status_by_job(session: Session, job_ids: Iterable[int]) -> dict[int, str]:
    """Delivery summary per job: ``failed`` > ``pending`` > ``sent``; ``none`` when nothing (or only
    cancelled deliveries)."""
    ids = sorted(set(job_ids))
    states: dict[int, set[str]] = defaultdict(set)
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        rows = session.execute(
            select(Document.job_id, Delivery.state)
            .join(Delivery, Delivery.document_id == Document.id)
            .where(Document.job_id.in_(chunk))
            .distinct()
        )
        for job_id, state in rows:
            states[job_id].add(DeliveryState(state).value)
    out: dict[int, str] = {}
    for job_id in ids:
        have = states.get(job_id, set())
        out[job_id] = next((s for s in ("failed", "pending", "sent") if s in have), "none")
    return out


def _no_parallel_workers(session: Session) -> None:
    """PostgreSQL: plan this transaction's page query without parallel workers.

    A page is at most a few hundred rows found through indexes; parallel plans pay worker
    start-up on every request and, for rare filter combinations, the planner's parallel plan
    walks far more rows than the serial one (measured in docs/benchmarks.md)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))


def _to_out(row: Row[Any], status: str, show_identifiers: bool) -> FindingOut:
    box = [row.box_x1, row.box_y1, row.box_x2, row.box_y2]
    px = [row.px_x1, row.px_y1, row.px_x2, row.px_y2]
    return FindingOut(
        id=row.id,
        created_at=row.created_at,
        study_instance_uid=row.study_instance_uid,
        study_date=row.study_date,
        calling_ae_title=row.calling_ae_title,
        modality=row.modality,
        sop_instance_uid=row.referenced_sop_instance_uid or row.sop_instance_uid,
        frame_number=row.frame_number,
        language=row.language,
        kind=row.kind,
        label=row.label,
        code_value=row.code_value,
        code_scheme=row.code_scheme,
        code_meaning=row.code_meaning,
        text=row.text,
        box=box if None not in box else None,
        box_px=px if None not in px else None,
        unparsed=row.unparsed,
        job_id=row.job_id,
        study_version=row.study_version,
        model_name=row.model_name,
        model_version=row.model_version,
        weights_id=row.weights_id,
        window=row.window,
        delivery_status=status,
        patient_id=row.patient_id if show_identifiers else None,
        patient_name=row.patient_name if show_identifiers else None,
        accession_number=row.accession_number if show_identifiers else None,
        identifiers_hidden=not show_identifiers,
    )


def _convert(session: Session, rows: Sequence[Row[Any]], show_identifiers: bool) -> list[FindingOut]:
    statuses = delivery_status_by_job(session, (r.job_id for r in rows))
    return [_to_out(r, statuses[r.job_id], show_identifiers) for r in rows]


def search_findings(
    session: Session,
    filters: FindingFilters,
    *,
    limit: int,
    cursor: str | None = None,
    show_identifiers: bool,
) -> tuple[list[FindingOut], str | None]:
    """One page of findings and the cursor of the next page (None at the end)."""
    _no_parallel_workers(session)
    rows = session.execute(finding_rows_statement(filters, cursor).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = _convert(session, rows, show_identifiers)
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return items, next_cursor


def iter_findings(
    session: Session,
    filters: FindingFilters,
    *,
    show_identifiers: bool,
    batch_size: int = 1000,
) -> Generator[list[FindingOut], None, None]:
    """Every matching finding, in batches, streamed from the database (server-side cursor)."""
    result = session.execute(
        finding_rows_statement(filters), execution_options={"yield_per": batch_size}
    )
    try:
        for rows in result.partitions():
            yield _convert(session, rows, show_identifiers)
    finally:
        result.close()


#: Columns of the CSV export, in order (patient identifiers last; empty when hidden).
EXPORT_COLUMNS = [
    "id", "created_at", "study_instance_uid", "study_version", "study_date", "calling_ae_title",
    "modality", "sop_instance_uid", "frame_number", "language", "kind", "label", "code_value",
    "code_scheme", "code_meaning", "text", "box", "box_px", "window", "unparsed", "job_id", "model_name",
    "model_version", "weights_id", "delivery_status", "identifiers_hidden", "patient_id",
    "patient_name", "accession_number",
]
