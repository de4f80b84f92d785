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
    from sr_writer.content import ImageFinding, Note, RegionFinding, ReportContent

__all__ = ["LANGUAGES", "build_contents", "task_name", "write_job_documents", "RESULTS_DIR", "IncompleteFindingError"]

LANGUAGES = ("en", "zh")
RESULTS_DIR = "results"


class IncompleteFindingError(ValueError):
    """A recorded finding lacks a column every finding of its kind has (written by workers.tasks)."""


def _incomplete(f: Finding, column: str) -> IncompleteFindingError:
    return IncompleteFindingError(f"{f.kind} finding {f.id} of job {f.job_id} has no {column}")


def _spacing(values: list[float] | None) -> tuple[float, float] | None:
    """Pixel Spacing (0028,0030) as recorded at ingest: (row spacing, column spacing) in mm."""
    if not values:
        return None
    row_mm, column_mm = values
    return row_mm, column_mm


def _code(f: Finding) -> tuple[str, str, str] | None:
    """The finding's (Code Value, Coding Scheme Designator, Code Meaning), if the worker coded it."""
    if not f.code_value:
        return None
    if f.code_scheme is None or f.code_meaning is None:
        raise _incomplete(f, "coding scheme or code meaning")
    return f.code_value, f.code_scheme, f.code_meaning


def _region_finding(f: Finding, code: tuple[str, str, str] | None, pixel_spacing: tuple[float, float] | None,
                    description_language: str | None, window: str | None) -> RegionFinding:
    """A region finding's row as the SR writer's :class:`sr_writer.content.RegionFinding`."""
    from sr_writer.content import RegionFinding

    if f.tracking_uid is None or f.tracking_identifier is None:
        raise _incomplete(f, "tracking identifier")
    if f.label is None:
        raise _incomplete(f, "label")
    if f.referenced_sop_class_uid is None or f.referenced_sop_instance_uid is None:
        raise _incomplete(f, "referenced image")
    if f.px_x1 is None or f.px_y1 is None or f.px_x2 is None or f.px_y2 is None:
        raise _incomplete(f, "box in pixels")
    return RegionFinding(
        tracking_uid=f.tracking_uid,
        tracking_identifier=f.tracking_identifier,
        label=f.label,
        description=f.text,
        code=code,
        referenced_sop_class_uid=f.referenced_sop_class_uid,
        referenced_sop_instance_uid=f.referenced_sop_instance_uid,
        frame_number=f.frame_number,
        pixels=(f.px_x1, f.px_y1, f.px_x2, f.px_y2),
        pixel_spacing=pixel_spacing,
        description_language=description_language,
        window=window,
    )


def task_name(run: ModelRun) -> str:
    """The task and the training set (or prompt) of a run, as the SR names it: "report (mimiccxr_train_rg)".

    Results of runs of the same task name may be one SR item (``sr_writer.content.result_key``).
    """
    return f"{run.task} ({run.training_set or run.prompt_id or run.task})"


def _image_finding(f: Finding, task: str) -> ImageFinding:
    """A classification finding's row as the SR writer's :class:`sr_writer.content.ImageFinding`."""
    from sr_writer.content import ImageFinding

    code = _code(f)
    if code is None:
        raise _incomplete(f, "code")
    if f.referenced_sop_class_uid is None or f.referenced_sop_instance_uid is None:
        raise _incomplete(f, "referenced image")
    return ImageFinding(code=code, source=(f.referenced_sop_class_uid, f.referenced_sop_instance_uid, f.frame_number),
                        task=task)


def _predecessors(session: Session, job: Job, language: str) -> list[tuple[str, str, str, str]]:
    """The SR of the previous version of the study in this language, if any."""
    study = session.get_one(Study, job.study_id)
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


def build_contents(session: Session, settings: Settings, job: Job) -> dict[str, ReportContent]:
    """One :class:`sr_writer.content.ReportContent` per language, from the job's records."""
    from sr_writer.coding import resolve_finding_codes
    from sr_writer.content import AlgorithmInfo, ReportContent

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
    spacing = {row.sop_instance_uid: _spacing(row.pixel_spacing) for row in instances}

    uid_root = installation_uid_root(session)
    findings_of: dict[int, list[Finding]] = {run.id: [] for run in runs}
    window_of = {run.id: run.window for run in runs}  # the window each box was found on
    for f in session.scalars(select(Finding).where(Finding.job_id == job.id).order_by(Finding.id)):
        findings_of[f.model_run_id].append(f)

    tasks = {run.id: task_name(run) for run in runs}
    contents: dict[str, ReportContent] = {}
    for language in LANGUAGES:
        # Each run's findings in this language; a task trained in one language only (every run
        # is asked in one) is reported in that language in both SRs, and each text says so.
        chosen: list[Finding] = []
        for run in runs:
            own = [f for f in findings_of[run.id] if f.language == language]
            chosen.extend(own or findings_of[run.id])
        other = [f for f in chosen if f.language != language]
        seen: set[str] = set()
        regions: list[RegionFinding] = []
        for f in [f for f in chosen if f.language == language] + other:  # a matched pair: its own language
            if f.kind != "region" or f.tracking_uid in seen:
                continue
            if f.tracking_uid is None or f.label is None or f.referenced_sop_instance_uid is None:
                raise _incomplete(f, "tracking UID, label or referenced image")
            seen.add(f.tracking_uid)
            code = _code(f)
            if f.language != language:  # the same code, its meaning in this SR's language
                code = resolve_finding_codes({f.language: f.label, language: f.label})[language]
            regions.append(_region_finding(
                f, code, spacing.get(f.referenced_sop_instance_uid),
                f.language if f.text and f.language != language else None,
                window_of[f.model_run_id],
            ))
        report_texts: list[str] = []
        report_sources: list[tuple[str, str, int | None] | None] = []
        report_languages: list[str | None] = []
        report_tasks: list[str | None] = []
        for f in chosen:
            if f.kind == "report" and f.text:
                report_texts.append(f.text)
                report_sources.append(
                    (f.referenced_sop_class_uid, f.referenced_sop_instance_uid, f.frame_number)
                    if f.referenced_sop_class_uid and f.referenced_sop_instance_uid else None
                )
                report_languages.append(f.language if f.language != language else None)
                report_tasks.append(tasks[f.model_run_id])
        coded = [_image_finding(f, tasks[f.model_run_id]) for f in chosen if f.kind == "classification" and f.language == language]
        contents[language] = ReportContent(
            language=language,
            evidence=evidence,
            report_texts=report_texts,
            report_sources=report_sources,
            report_languages=report_languages,
            report_tasks=report_tasks,
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
        task = task_name(run)
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
