"""From recorded findings to DICOM documents and deliveries (the SR-writing stage).

Reads only what the inference stage recorded (model runs and findings of a job) and the headers
of the instances they reference, builds one SR per language (PS3.16 TID 1500, see
:mod:`sr_writer.report`), optionally presentation states, writes them to the spool and records a
:class:`~common.models.Document` and one :class:`~common.models.Delivery` per destination.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import installation_uid_root
from common.models import Delivery, Destination, Document, Finding, Instance, Job, ModelRun, Study
from common.settings import Settings

__all__ = ["LANGUAGES", "build_contents", "write_job_documents", "RESULTS_DIR"]

LANGUAGES = ("en", "zh")
RESULTS_DIR = "results"


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _predecessors(session: Session, job: Job, language: str) -> list[tuple[str, str, str, str]]:
    """The SR of the previous version of the study in this language, if any."""
    study = session.get(Study, job.study_id)
    previous = session.scalars(
        select(Document)
        .join(Job, Document.job_id == Job.id)
        .where(Job.study_id == job.study_id, Job.study_version < job.study_version,
               Document.kind == "sr", Document.language == language)
        .order_by(Job.study_version.desc())
    ).first()
    if previous is None:
        return []
    return [(study.study_instance_uid, previous.series_instance_uid, previous.sop_class_uid,
             previous.sop_instance_uid)]


def build_contents(session: Session, settings: Settings, job: Job) -> dict[str, object]:
    """One :class:`sr_writer.content.ReportContent` per language, from the job's records."""
    from sr_writer.content import AlgorithmInfo, RegionFinding, ReportContent

    runs = session.scalars(select(ModelRun).where(ModelRun.job_id == job.id).order_by(ModelRun.id)).all()
    if not runs:
        raise LookupError(f"job {job.id} has no model runs to report")
    first = runs[0]
    algorithm = AlgorithmInfo(
        backend=first.backend, name=first.model_name, version=first.model_version,
        weights_id=first.weights_id, manufacturer="medrega-gateway", is_test_model=first.backend != "medrega",
    )
    instance_ids = sorted({run.instance_id for run in runs})
    instances = session.scalars(select(Instance).where(Instance.id.in_(instance_ids)).order_by(Instance.id)).all()
    evidence = [pydicom.dcmread(settings.data_dir / row.path, stop_before_pixels=True) for row in instances]
    spacing = {row.sop_instance_uid: tuple(row.pixel_spacing) if row.pixel_spacing else None for row in instances}

    uid_root = installation_uid_root(session)
    contents: dict[str, object] = {}
    for language in LANGUAGES:
        findings = session.scalars(
            select(Finding).where(Finding.job_id == job.id, Finding.language == language).order_by(Finding.id)
        ).all()
        regions = [
            RegionFinding(
                tracking_uid=f.tracking_uid,
                tracking_identifier=f.tracking_identifier,
                label=f.label,
                description=f.text,
                code=(f.code_value, f.code_scheme, f.code_meaning) if f.code_value else None,
                referenced_sop_class_uid=f.referenced_sop_class_uid,
                referenced_sop_instance_uid=f.referenced_sop_instance_uid,
                frame_number=f.frame_number,
                pixels=(f.px_x1, f.px_y1, f.px_x2, f.px_y2),
                pixel_spacing=spacing.get(f.referenced_sop_instance_uid),
            )
            for f in findings if f.kind == "region"
        ]
        reports = [f for f in findings if f.kind == "report" and f.text]
        texts = [f.text for f in reports]
        sources = [(f.referenced_sop_class_uid, f.referenced_sop_instance_uid, f.frame_number)
                   if f.referenced_sop_instance_uid else None for f in reports]
        contents[language] = ReportContent(
            language=language,
            evidence=evidence,
            report_texts=texts,
            report_sources=sources,
            complete=not job.images_skipped,
            regions=regions,
            algorithm=algorithm,
            study_version=job.study_version,
            content_datetime=_as_utc(job.created_at),
            predecessor=_predecessors(session, job, language),
            uid_root=uid_root,
        )
    return contents


def _destinations(session: Session, names: Sequence[str]) -> Sequence[Destination]:
    query = select(Destination).where(Destination.enabled.is_(True))
    if names:
        query = query.where(Destination.name.in_(list(names)))
    return session.scalars(query.order_by(Destination.name)).all()


def _store(session: Session, settings: Settings, job: Job, ds: pydicom.Dataset, kind: str,
           language: str | None, predecessor: str | None) -> Document:
    """Write ``ds`` to the spool and record it; the same SOP Instance UID is recorded once."""
    from sr_writer.io import write_dataset

    rel = Path(RESULTS_DIR) / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    (settings.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
    write_dataset(ds, settings.data_dir / rel)
    doc = session.scalar(select(Document).where(Document.sop_instance_uid == ds.SOPInstanceUID))
    if doc is None:
        doc = Document(job_id=job.id, kind=kind, language=language, sop_class_uid=ds.SOPClassUID,
                       sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                       predecessor_sop_instance_uid=predecessor, path=str(rel))
        session.add(doc)
        session.flush()
    return doc


def write_job_documents(session: Session, settings: Settings, job: Job) -> list[Document]:
    """Build, write and record the job's SRs (and GSPS where a destination wants them)."""
    from sr_writer.report import build_sr

    contents = build_contents(session, settings, job)
    destinations = _destinations(session, job.destinations or [])
    documents: list[Document] = []
    for language, content in contents.items():
        ds = build_sr(content)
        predecessor = content.predecessor[0][3] if content.predecessor else None
        doc = _store(session, settings, job, ds, "sr", language, predecessor)
        documents.append(doc)
        for dest in destinations:
            _ensure_delivery(session, doc, dest.name)
    gsps_destinations = [d for d in destinations if d.send == "sr+gsps"]
    if gsps_destinations and any(c.regions for c in contents.values()):
        # One presentation state per image, with a graphic layer per language.
        from sr_writer.gsps import build_presentation_states

        refs = {r.referenced_sop_instance_uid for c in contents.values() for r in c.regions}
        rows = session.scalars(select(Instance).where(Instance.sop_instance_uid.in_(refs))).all()
        sources = {row.sop_instance_uid: pydicom.dcmread(settings.data_dir / row.path) for row in rows}
        for pr in build_presentation_states(list(contents.values()), sources):
            pr_doc = _store(session, settings, job, pr, "gsps", None, None)
            documents.append(pr_doc)
            for dest in gsps_destinations:
                _ensure_delivery(session, pr_doc, dest.name)
    session.flush()
    for doc in documents:
        session.refresh(doc)
    return documents


def _ensure_delivery(session: Session, doc: Document, destination_name: str) -> None:
    exists = session.scalar(select(Delivery).where(Delivery.document_id == doc.id,
                                                   Delivery.destination_name == destination_name))
    if exists is None:
        session.add(Delivery(document_id=doc.id, destination_name=destination_name))
