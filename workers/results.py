"""From recorded findings to DICOM documents and deliveries (the SR-writing stage).

Reads only what the inference stage recorded (model runs and findings of a job) and the headers
of the instances they reference, builds one SR per language (PS3.16 TID 1500, see
:mod:`sr_writer.report`), optionally presentation states, writes them to the spool and records a
:class:`~common.models.Document` and one :class:`~common.models.Delivery` per destination.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import installation_uid_root
from common.models import Delivery, Destination, Document, Finding, Instance, Job, ModelRun, Study
from common.settings import Settings
from workflow.deliveries import DeliveryAction, transition

if TYPE_CHECKING:  # sr_writer is imported where documents are written
    from sr_writer.content import Note

__all__ = ["LANGUAGES", "build_contents", "write_job_documents", "RESULTS_DIR"]

LANGUAGES = ("en", "zh")
RESULTS_DIR = "results"


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
    from sr_writer.coding import resolve_finding_codes
    from sr_writer.content import AlgorithmInfo, ImageFinding, RegionFinding, ReportContent

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
    findings_of: dict[int, list[Finding]] = {run.id: [] for run in runs}
    for f in session.scalars(select(Finding).where(Finding.job_id == job.id).order_by(Finding.id)):
        findings_of[f.model_run_id].append(f)

    contents: dict[str, object] = {}
    for language in LANGUAGES:
        # Each run's findings in this language; a task trained in one language only (every run
        # is asked in one) is reported in that language in both SRs, and each text says so.
        chosen: list[Finding] = []
        for run in runs:
            own = [f for f in findings_of[run.id] if f.language == language]
            chosen.extend(own or findings_of[run.id])
        other = [f for f in chosen if f.language != language]
        seen: set[str] = set()
        regions = []
        for f in [f for f in chosen if f.language == language] + other:  # a matched pair: its own language
            if f.kind != "region" or f.tracking_uid in seen:
                continue
            seen.add(f.tracking_uid)
            code = (f.code_value, f.code_scheme, f.code_meaning) if f.code_value else None
            if f.language != language:  # the same code, its meaning in this SR's language
                code = resolve_finding_codes({f.language: f.label, language: f.label})[language]
            regions.append(RegionFinding(
                tracking_uid=f.tracking_uid,
                tracking_identifier=f.tracking_identifier,
                label=f.label,
                description=f.text,
                code=code,
                referenced_sop_class_uid=f.referenced_sop_class_uid,
                referenced_sop_instance_uid=f.referenced_sop_instance_uid,
                frame_number=f.frame_number,
                pixels=(f.px_x1, f.px_y1, f.px_x2, f.px_y2),
                pixel_spacing=spacing.get(f.referenced_sop_instance_uid),
                description_language=f.language if f.text and f.language != language else None,
            ))
        reports = [f for f in chosen if f.kind == "report" and f.text]
        coded = [ImageFinding(code=(f.code_value, f.code_scheme, f.code_meaning),
                              source=(f.referenced_sop_class_uid, f.referenced_sop_instance_uid, f.frame_number))
                 for f in chosen if f.kind == "classification" and f.language == language]
        contents[language] = ReportContent(
            language=language,
            evidence=evidence,
            report_texts=[f.text for f in reports],
            report_sources=[(f.referenced_sop_class_uid, f.referenced_sop_instance_uid, f.frame_number)
                            if f.referenced_sop_instance_uid else None for f in reports],
            report_languages=[f.language if f.language != language else None for f in reports],
            image_findings=coded,
            notes=_notes(runs, findings_of),
            complete=not job.images_skipped and not any(run.truncated for run in runs),
            regions=regions,
            algorithm=algorithm,
            study_version=job.study_version,
            content_datetime=job.created_at,
            predecessor=_predecessors(session, job, language),
            uid_root=uid_root,
        )
    return contents


def _notes(runs: Sequence[ModelRun], findings_of: dict[int, list[Finding]]) -> list[Note]:
    """What the SR says about answers that are not findings: cut off, sentences left out, unmapped."""
    from sr_writer.content import Note

    notes: list[Note] = []
    for run in runs:
        task = f"{run.task} ({run.training_set or run.prompt_id or run.task})"
        if run.truncated:
            notes.append(Note("truncated", task))
        for removed in run.removed_sentences or []:
            notes.append(Note(removed["reason"], task, removed["sentence"], run.language))
        if run.task == "classification" and not findings_of[run.id] and run.raw_answer.strip():
            notes.append(Note("unmapped", task, run.raw_answer.strip(), run.language))
    return notes


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
        transition(session, Delivery(document_id=doc.id, destination_name=destination_name),
                   DeliveryAction.CREATE, detail=f"{doc.kind} to {destination_name}")
