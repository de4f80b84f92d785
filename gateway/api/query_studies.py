"""Studies for auditors: the list, one study's detail, and its timeline.

The timeline puts together what each stage recorded: the study's arrival and completion
(``Study``), every job state change (``JobEvent``), every document written (``Document``) and
every delivery outcome (``Delivery``/``DeliveryAttempt``), in time order with durations.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import Row, exists, func, select
from sqlalchemy.orm import Session, selectinload

from common.models import (
    Delivery,
    DeliveryState,
    Document,
    Finding,
    ImageSelection,
    Instance,
    Job,
    JobEvent,
    JobState,
    ModelRun,
    Series,
    Study,
    as_utc,
)
from sr_writer.content import group_identical, result_key
from workers.results import task_name
from workflow.retention import pruned_message

from .pagination import after_cursor, encode_cursor
from .query_findings import FindingFilters, search_findings
from .schemas import (
    DeliveryAttemptOut,
    DeliveryEventOut,
    DeliveryOut,
    ImageRefOut,
    ImageResultOut,
    ImageSelectionOut,
    JobOut,
    ModelRunOut,
    RemovedSentenceOut,
    SeriesOut,
    StudyDetail,
    StudyOut,
    Timeline,
    TimelineStep,
)

__all__ = [
    "StudyNotFoundError",
    "StudyFilters",
    "get_study",
    "study_out",
    "list_studies",
    "study_timeline",
    "study_deliveries",
    "study_image_results",
    "study_detail",
    "delivery_out",
    "StudyActivity",
    "study_activity",
    "study_jobs",
]

#: At most this many findings are returned inline with a study's detail.
DETAIL_FINDINGS_LIMIT = 1000


class StudyNotFoundError(LookupError):
    """No study with that Study Instance UID."""


@dataclass(frozen=True)
class StudyFilters:
    received_from: dt.datetime | None = None
    received_to: dt.datetime | None = None
    modality: str | None = None
    calling_ae_title: str | None = None
    state: str | None = None

    def as_query(self) -> str:
        out = {k: (as_utc(v).isoformat() if isinstance(v, dt.datetime) else v)
               for k, v in asdict(self).items() if v not in (None, "")}
        return json.dumps(out, sort_keys=True, ensure_ascii=False)


def get_study(session: Session, study_instance_uid: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        raise StudyNotFoundError(f"no study {study_instance_uid}")
    return study


def study_out(study: Study, modalities: Sequence[str | None], instance_count: int,
              show_identifiers: bool) -> StudyOut:
    return StudyOut(
        study_instance_uid=study.study_instance_uid,
        study_date=study.study_date,
        study_description=study.study_description,
        calling_ae_title=study.calling_ae_title,
        state=study.state.value if hasattr(study.state, "value") else str(study.state),
        version=study.version,
        urgent=study.urgent,
        first_received_at=study.first_received_at,
        last_received_at=study.last_received_at,
        completed_at=study.completed_at,
        modalities=sorted({m for m in modalities if m}),
        instance_count=instance_count,
        images_pruned_at=study.images_pruned_at,
        images_note=(pruned_message(study.study_instance_uid, study.images_pruned_at)
                     if study.images_pruned_at else None),
        patient_id=study.patient_id if show_identifiers else None,
        patient_name=study.patient_name if show_identifiers else None,
        accession_number=study.accession_number if show_identifiers else None,
        identifiers_hidden=not show_identifiers,
    )


def list_studies(
    session: Session, filters: StudyFilters, *, limit: int, cursor: str | None,
    show_identifiers: bool,
) -> tuple[list[StudyOut], str | None]:
    """Studies newest first (by first instance received), keyset-paginated."""
    stmt = select(Study)
    f = filters
    if f.received_from is not None:
        stmt = stmt.where(Study.first_received_at >= f.received_from)
    if f.received_to is not None:
        stmt = stmt.where(Study.first_received_at < f.received_to)
    if f.calling_ae_title:
        stmt = stmt.where(Study.calling_ae_title == f.calling_ae_title.strip())
    if f.state:
        stmt = stmt.where(Study.state == f.state)
    if f.modality:
        stmt = stmt.where(exists().where(Series.study_id == Study.id,
                                         Series.modality == f.modality.strip().upper()))
    keyset = after_cursor(Study.first_received_at, Study.id, cursor)
    if keyset is not None:
        stmt = stmt.where(keyset)
    studies = session.scalars(
        stmt.order_by(Study.first_received_at.desc(), Study.id.desc()).limit(limit + 1)
    ).all()
    more = len(studies) > limit
    studies = studies[:limit]
    ids = [s.id for s in studies]
    modalities: dict[int, list[str | None]] = defaultdict(list)  # Modality may be missing
    counts: dict[int, int] = {}
    if ids:
        for study_id, modality in session.execute(
            select(Series.study_id, Series.modality).where(Series.study_id.in_(ids))
        ):
            modalities[study_id].append(modality)
        counts = {sid: n for sid, n in session.execute(
            select(Instance.study_id, func.count()).where(Instance.study_id.in_(ids))
            .group_by(Instance.study_id)
        )}
    items = [study_out(s, modalities[s.id], counts.get(s.id, 0), show_identifiers) for s in studies]
    next_cursor = (encode_cursor(studies[-1].first_received_at, studies[-1].id)
                   if more and studies else None)
    return items, next_cursor


def _seconds(a: dt.datetime, b: dt.datetime) -> float:
    return round((b - a).total_seconds(), 6)


def study_timeline(session: Session, study: Study) -> Timeline:
    """Every recorded step of ``study`` in time order, with durations."""
    raw: list[tuple[dt.datetime, int, str, int | None, int | None, str | None]] = []
    # (at, tie-break order, step, job_id, version, detail)
    raw.append((study.first_received_at, 0, "received", None, None, None))
    if study.last_received_at and study.last_received_at != study.first_received_at:
        raw.append((study.last_received_at, 1, "last_received", None, None, None))
    if study.completed_at is not None:
        raw.append((study.completed_at, 2, "complete", None, None, None))

    jobs = session.execute(
        select(Job.id, Job.study_version).where(Job.study_id == study.id)
    ).all()
    version = {j.id: j.study_version for j in jobs}
    job_ids = list(version)
    if job_ids:
        for ev in session.execute(
            select(JobEvent.job_id, JobEvent.state, JobEvent.at, JobEvent.detail)
            .where(JobEvent.job_id.in_(job_ids))
        ):
            raw.append((ev.at, 3, ev.state, ev.job_id, version[ev.job_id], ev.detail))
        docs = session.execute(
            select(Document.id, Document.job_id, Document.kind, Document.language,
                   Document.created_at).where(Document.job_id.in_(job_ids))
        ).all()
        for d in docs:
            what = d.kind + (f" ({d.language})" if d.language else "")
            raw.append((d.created_at, 4, "document_written", d.job_id, version[d.job_id], what))
        doc_job = {d.id: d for d in docs}
        if doc_job:
            for dl in session.scalars(
                select(Delivery).where(Delivery.document_id.in_(list(doc_job)))
                .options(selectinload(Delivery.attempts_log))
            ):
                d = doc_job[dl.document_id]
                what = f"{d.kind}" + (f" ({d.language})" if d.language else "")
                if dl.delivered_at is not None:
                    raw.append((dl.delivered_at, 5, "delivered_to", d.job_id, version[d.job_id],
                                f"{what} to {dl.destination_name}"))
                elif dl.state == DeliveryState.FAILED and dl.attempts_log:
                    last = dl.attempts_log[-1]
                    raw.append((last.at, 5, "delivery_failed", d.job_id, version[d.job_id],
                                f"{what} to {dl.destination_name} after {dl.attempts} attempts"))
    raw.sort(key=lambda r: (r[0], r[1]))
    start = study.first_received_at
    steps: list[TimelineStep] = []
    previous: dt.datetime | None = None
    last_delivered: dt.datetime | None = None
    for at, _order, step, job_id, ver, detail in raw:
        steps.append(TimelineStep(
            step=step, at=at, job_id=job_id, study_version=ver, detail=detail,
            since_previous_s=_seconds(previous, at) if previous is not None else None,
            since_received_s=_seconds(start, at),
        ))
        previous = at
        if step == "delivered_to":
            last_delivered = at
    return Timeline(
        study_instance_uid=study.study_instance_uid,
        steps=steps,
        total_s=_seconds(start, last_delivered) if last_delivered is not None else None,
    )


def delivery_out(dl: Delivery, doc: Document, study_uid: str) -> DeliveryOut:
    return DeliveryOut(
        id=dl.id,
        study_instance_uid=study_uid,
        job_id=doc.job_id,
        document_sop_instance_uid=doc.sop_instance_uid,
        document_kind=doc.kind,
        document_language=doc.language,
        destination_name=dl.destination_name,
        state=DeliveryState(dl.state).value,
        attempts=dl.attempts,
        sent_sop_class_uid=dl.sent_sop_class_uid,
        next_attempt_at=dl.next_attempt_at,
        delivered_at=dl.delivered_at,
        created_at=dl.created_at,
        last_error=dl.attempts_log[-1].error if dl.attempts_log else None,
        attempts_log=[
            DeliveryAttemptOut(at=a.at, status=a.status, error=a.error,
                               sop_class_uid=a.sop_class_uid)
            for a in dl.attempts_log
        ],
        events=[DeliveryEventOut(at=e.at, state=e.state, detail=e.detail) for e in dl.events],
    )


def study_deliveries(session: Session, study: Study) -> list[DeliveryOut]:
    rows = session.execute(
        select(Delivery, Document)
        .join(Document, Document.id == Delivery.document_id)
        .join(Job, Job.id == Document.job_id)
        .where(Job.study_id == study.id)
        .options(selectinload(Delivery.attempts_log), selectinload(Delivery.events))
        .order_by(Delivery.id)
    ).all()
    return [delivery_out(dl, doc, study.study_instance_uid) for dl, doc in rows]


def study_detail(session: Session, study: Study, *, show_identifiers: bool) -> StudyDetail:
    series = session.scalars(
        select(Series).where(Series.study_id == study.id).order_by(Series.series_number, Series.id)
    ).all()
    instances = session.execute(
        select(Instance.series_id, Instance.sop_instance_uid)
        .where(Instance.study_id == study.id)
        .order_by(Instance.instance_number, Instance.id)
    ).all()
    by_series: dict[int, list[str]] = defaultdict(list)
    for series_id, uid in instances:
        by_series[series_id].append(uid)
    findings, _ = search_findings(
        session, FindingFilters(study_instance_uid=study.study_instance_uid),
        limit=DETAIL_FINDINGS_LIMIT, show_identifiers=show_identifiers,
    )
    return StudyDetail(
        study=study_out(study, [s.modality for s in series if s.modality], len(instances),
                        show_identifiers),
        series=[
            SeriesOut(series_instance_uid=s.series_instance_uid, modality=s.modality,
                      body_part_examined=s.body_part_examined,
                      series_description=s.series_description, series_number=s.series_number,
                      instance_sop_uids=by_series[s.id])
            for s in series
        ],
        timeline=study_timeline(session, study),
        deliveries=study_deliveries(session, study),
        findings=findings,
        image_selection=study_image_selection(session, study),
        model_runs=study_model_runs(session, study),
        jobs=study_jobs(session, study),
        image_results=study_image_results(session, study),
    )


def study_image_results(session: Session, study: Study) -> list[ImageResultOut]:
    """The report texts and classification codes of ``study``, identical ones (same job, and
    :func:`sr_writer.content.result_key`) once with every image they were read from, as in the SR."""
    rows = session.execute(
        select(Finding, ModelRun, Job.study_version, Series.series_instance_uid)
        .join(ModelRun, ModelRun.id == Finding.model_run_id)
        .join(Job, Job.id == Finding.job_id)
        .outerjoin(Instance, Instance.sop_instance_uid == Finding.referenced_sop_instance_uid)
        .outerjoin(Series, Series.id == Instance.series_id)
        .where(Job.study_id == study.id, Finding.kind != "region")
        .order_by(Job.study_version, Finding.id)
    ).all()

    def key(row: Row[Finding, ModelRun, int, str]) -> tuple[object, ...]:
        f, run, _, series_uid = row
        code = (f.code_value, f.code_scheme, f.code_meaning or "") if f.code_value and f.code_scheme else None
        return (f.job_id, f.kind, result_key(text=None if code else (f.text or f.label or ""), code=code,
                                             task=task_name(run), language=f.language,
                                             series_instance_uid=series_uid))

    out = []
    for same in group_identical(rows, key):
        f, run, version, _ = same[0]
        images = dict.fromkeys((g.referenced_sop_instance_uid, g.frame_number) for g, _, _, _ in same)
        out.append(ImageResultOut(
            job_id=f.job_id, study_version=version, kind=f.kind, language=f.language, task=task_name(run),
            label=f.label, code_value=f.code_value, code_scheme=f.code_scheme, code_meaning=f.code_meaning,
            text=f.text, images=[ImageRefOut(sop_instance_uid=sop, frame_number=frame) for sop, frame in images],
            finding_ids=[g.id for g, _, _, _ in same],
        ))
    return out


def study_image_selection(session: Session, study: Study) -> list[ImageSelectionOut]:
    """Every image of every job of ``study`` chosen for the model or left out, with the reason."""
    rows = session.execute(
        select(ImageSelection, Job.study_version, Instance.sop_instance_uid)
        .join(Job, Job.id == ImageSelection.job_id)
        .outerjoin(Instance, Instance.id == ImageSelection.instance_id)
        .where(Job.study_id == study.id)
        .order_by(Job.study_version, ImageSelection.chosen.desc(), ImageSelection.id)
    ).all()
    return [
        ImageSelectionOut(job_id=sel.job_id, study_version=version, series_instance_uid=sel.series_instance_uid,
                          sop_instance_uid=uid, frame_number=sel.frame_number, chosen=sel.chosen, plan=sel.plan,
                          view=sel.view, reason=sel.reason)
        for sel, version, uid in rows
    ]


def study_model_runs(session: Session, study: Study) -> list[ModelRunOut]:
    """The prompts each image of ``study`` got: plan, training set, window, truncation, removals."""
    rows = session.execute(
        select(ModelRun, Job.study_version, Instance.sop_instance_uid)
        .join(Job, Job.id == ModelRun.job_id)
        .join(Instance, Instance.id == ModelRun.instance_id)
        .where(Job.study_id == study.id)
        .order_by(Job.study_version, ModelRun.id)
    ).all()
    return [
        ModelRunOut(id=run.id, job_id=run.job_id, study_version=version, sop_instance_uid=uid,
                    frame_number=run.frame_number, plan=run.plan, prompt_id=run.prompt_id,
                    training_set=run.training_set, task=run.task, language=run.language, window=run.window,
                    view=run.view, truncated=bool(run.truncated),
                    removed_sentences=[RemovedSentenceOut(**r) for r in run.removed_sentences or []],
                    selection_reason=run.selection_reason)
        for run, version, uid in rows
    ]


@dataclass(frozen=True)
class StudyActivity:
    """What became of a study: its jobs (newest version first), its deliveries by state (a
    pending delivery already tried once is ``retrying``) and how many findings it has."""

    jobs: list[tuple[int, int, str]]  # (job id, study version, state)
    deliveries: dict[str, int]
    findings: int


def study_activity(session: Session, study_instance_uids: Sequence[str]) -> dict[str, StudyActivity]:
    """:class:`StudyActivity` of each study of a page (three grouped queries for the page)."""
    uids = list(study_instance_uids)
    if not uids:
        return {}
    jobs: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for uid, job_id, version, job_state in session.execute(
        select(Study.study_instance_uid, Job.id, Job.study_version, Job.state)
        .join(Job, Job.study_id == Study.id).where(Study.study_instance_uid.in_(uids))
        .order_by(Job.study_version.desc(), Job.id.desc())
    ):
        jobs[uid].append((job_id, version, JobState(job_state).value))
    deliveries: dict[str, dict[str, int]] = defaultdict(dict)
    # Grouped by the attempts themselves (few values): PostgreSQL refuses ``attempts > 0`` in both
    # the select list and GROUP BY, each with its own bound parameter.
    for uid, state, attempts, n in session.execute(
        select(Study.study_instance_uid, Delivery.state, Delivery.attempts, func.count())
        .join(Job, Job.study_id == Study.id).join(Document, Document.job_id == Job.id)
        .join(Delivery, Delivery.document_id == Document.id)
        .where(Study.study_instance_uid.in_(uids))
        .group_by(Study.study_instance_uid, Delivery.state, Delivery.attempts)
    ):
        value = DeliveryState(state).value
        key = "retrying" if value == DeliveryState.PENDING.value and attempts > 0 else value
        deliveries[uid][key] = deliveries[uid].get(key, 0) + n
    findings = dict(session.execute(
        select(Study.study_instance_uid, func.count(Finding.id))
        .join(Job, Job.study_id == Study.id).join(Finding, Finding.job_id == Job.id)
        .where(Study.study_instance_uid.in_(uids)).group_by(Study.study_instance_uid)
    ).all())
    return {uid: StudyActivity(jobs[uid], deliveries[uid], findings.get(uid, 0)) for uid in uids}


def study_jobs(session: Session, study: Study) -> list[JobOut]:
    """Every job (one per result version) of ``study``, newest version first."""
    return [
        JobOut(id=j.id, study_instance_uid=study.study_instance_uid, study_version=j.study_version,
               state=JobState(j.state).value, attempts=j.attempts, error=j.error,
               created_at=j.created_at, updated_at=j.updated_at, worker=j.worker)
        for j in session.scalars(select(Job).where(Job.study_id == study.id)
                                 .order_by(Job.study_version.desc(), Job.id.desc()))
    ]
