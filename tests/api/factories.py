"""Realistic findings-database rows for the API tests, with a real (tiny) DICOM image in the spool.

``make_study`` writes what the pipeline would have written for one processed study: the study,
its series and instance (a decodable DICOM file under ``data_dir``), a job with its events, one
model run per language with bilingual region findings, one SR per language, and deliveries.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session

from common.models import (
    Delivery,
    DeliveryAttempt,
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
    StudyState,
)

CR_STORAGE = ComputedRadiographyImageStorage
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ROWS, COLUMNS = 96, 128

#: (English, Chinese, SNOMED CT code, box 0-999 as the model gives it)
REGIONS = [
    ("left lung", "左肺", "44029006", (560, 120, 900, 800)),
    ("right lung", "右肺", "3341006", (100, 120, 440, 800)),
    ("heart", "心脏", "80891009", (380, 400, 700, 850)),
]

_counter = itertools.count(1)
BASE_TIME = dt.datetime(2026, 3, 2, 8, 0, tzinfo=dt.timezone.utc)


def write_tiny_dicom(path: Path, *, study_uid: str, series_uid: str, sop_uid: str,
                     modality: str = "CR", rows: int = ROWS, columns: int = COLUMNS) -> Path:
    """A small, decodable 12-bit MONOCHROME2 image (two dark 'lungs' on a bright field)."""
    y, x = np.mgrid[0:rows, 0:columns]
    img = np.full((rows, columns), 3000, dtype=np.uint16)
    for cx in (0.28 * columns, 0.72 * columns):
        inside = ((x - cx) / (0.18 * columns)) ** 2 + ((y - 0.45 * rows) / (0.33 * rows)) ** 2 < 1
        img[inside] = 700
    img += (x * 4).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-1"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = img.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class StudyRows:
    study: Study
    instance: Instance
    job: Job
    findings: list[Finding]
    documents: list[Document]
    deliveries: list[Delivery] = field(default_factory=list)


def make_study(
    session: Session,
    data_dir: Path,
    *,
    received_at: dt.datetime | None = None,
    modality: str = "CR",
    calling_ae_title: str = "CR_ROOM_1",
    model_name: str = "MedRegA",
    weights_id: str = "sha256:5c2d9f0e",
    delivery_state: DeliveryState = DeliveryState.SENT,
    job_state: JobState = JobState.DELIVERED,
    destinations: tuple[str, ...] = ("PACS",),
    patient_id: str | None = None,
    regions: list[tuple[str, str, str, tuple[int, int, int, int]]] | None = None,
    write_image: bool = True,
) -> StudyRows:
    """One processed study with every pipeline stage recorded; ``flush``ed, not committed."""
    n = next(_counter)
    t0 = received_at or BASE_TIME + dt.timedelta(hours=n)
    study_uid, series_uid, sop_uid = (generate_uid() for _ in range(3))
    study = Study(
        study_instance_uid=study_uid, patient_id=patient_id or f"PID{n:05d}",
        patient_name=f"Doe^Jane{n}", accession_number=f"ACC{n:05d}", study_date=t0.strftime("%Y%m%d"),
        study_description="Chest PA", calling_ae_title=calling_ae_title,
        state=StudyState.COMPLETE, version=1, first_received_at=t0,
        last_received_at=t0 + dt.timedelta(seconds=2), completed_at=t0 + dt.timedelta(seconds=32),
    )
    session.add(study)
    session.flush()
    series = Series(study_id=study.id, series_instance_uid=series_uid, modality=modality,
                    body_part_examined="CHEST", series_description="PA", series_number=1)
    session.add(series)
    session.flush()
    rel = f"spool/{study_uid}/{sop_uid}.dcm"
    if write_image:
        write_tiny_dicom(data_dir / rel, study_uid=study_uid, series_uid=series_uid,
                         sop_uid=sop_uid, modality=modality)
    instance = Instance(
        study_id=study.id, series_id=series.id, sop_instance_uid=sop_uid, sop_class_uid=CR_STORAGE,
        transfer_syntax_uid=ExplicitVRLittleEndian, instance_number=1, rows=ROWS, columns=COLUMNS,
        number_of_frames=1, path=rel, size_bytes=ROWS * COLUMNS * 2 + 400, sha256="0" * 64,
        calling_ae_title=calling_ae_title, received_at=t0,
    )
    session.add(instance)
    session.flush()
    job = Job(study_id=study.id, study_version=1, state=job_state, attempts=1, instance_count=1,
              destinations=list(destinations), created_at=t0 + dt.timedelta(seconds=32),
              updated_at=t0 + dt.timedelta(seconds=60), worker="gpu-1",
              error="model timed out" if job_state in (JobState.FAILED, JobState.DEAD) else None)
    session.add(job)
    session.flush()
    steps = [("queued", 33), ("running", 35), ("inferred", 47), ("sr_written", 48)]
    if job_state == JobState.DELIVERED:
        steps.append(("delivered", 50))
    elif job_state in (JobState.FAILED, JobState.DEAD):
        steps = steps[:2] + [(job_state.value, 50)]
    for state, s in steps:
        session.add(JobEvent(job_id=job.id, state=state, at=t0 + dt.timedelta(seconds=s)))

    if job_state not in (JobState.FAILED, JobState.DEAD):
        session.add(ImageSelection(job_id=job.id, instance_id=instance.id, series_instance_uid=series.series_instance_uid,
                                   chosen=True, plan="chest-xray-frontal", view="frontal",
                                   reason=f"{modality} frontal view (View Position PA)"))
        session.add(ImageSelection(job_id=job.id, instance_id=None, series_instance_uid=series.series_instance_uid,
                                   chosen=False, reason="localizer (Image Type ORIGINAL\\PRIMARY\\LOCALIZER)"))
    findings: list[Finding] = []
    documents: list[Document] = []
    deliveries: list[Delivery] = []
    inferred = job_state not in (JobState.FAILED, JobState.DEAD)
    for lang_index, language in enumerate(("en", "zh") if inferred else ()):
        run = ModelRun(
            job_id=job.id, instance_id=instance.id, language=language, task="grounded_report",
            backend="medrega", model_name=model_name, model_version="1.0", weights_id=weights_id,
            prompt="Please list the regions in this image with boxes.", raw_answer="...",
            duration_s=5.5, created_at=t0 + dt.timedelta(seconds=40 + lang_index),
            plan="chest-xray-frontal", prompt_id="grounded_report_en", training_set="grounded_reports_mimiccxr",
            view="frontal", truncated=language == "zh", selection_reason=f"{modality} frontal view (View Position PA)",
            removed_sentences=[{"sentence": "Compared to prior, unchanged.", "reason": "prior_study"}]
            if language == "en" else None,
        )
        session.add(run)
        session.flush()
        for en, zh, code, box in (REGIONS if regions is None else regions):
            x1, y1, x2, y2 = box
            f = Finding(
                job_id=job.id, model_run_id=run.id, language=language, kind="region",
                label=en if language == "en" else zh, code_value=code, code_scheme="SCT",
                code_meaning=en, box_x1=x1, box_y1=y1, box_x2=x2, box_y2=y2,
                px_x1=x1 / 999 * COLUMNS, px_y1=y1 / 999 * ROWS,
                px_x2=x2 / 999 * COLUMNS, px_y2=y2 / 999 * ROWS,
                referenced_sop_instance_uid=sop_uid, referenced_sop_class_uid=CR_STORAGE,
                tracking_uid=generate_uid(), tracking_identifier=f"region {code}",
                created_at=t0 + dt.timedelta(seconds=47, microseconds=len(findings)),
            )
            session.add(f)
            findings.append(f)
        if job_state in (JobState.DELIVERED, JobState.SR_WRITTEN):
            doc = Document(
                job_id=job.id, kind="sr", language=language, sop_class_uid=BASIC_TEXT_SR,
                sop_instance_uid=generate_uid(), series_instance_uid=generate_uid(),
                path=f"out/{study_uid}/{language}.dcm", created_at=t0 + dt.timedelta(seconds=48),
            )
            session.add(doc)
            session.flush()
            documents.append(doc)
            for dest in destinations:
                dl = Delivery(document_id=doc.id, destination_name=dest, state=delivery_state,
                              attempts=1 if delivery_state != DeliveryState.FAILED else 5,
                              created_at=t0 + dt.timedelta(seconds=48))
                if delivery_state == DeliveryState.SENT:
                    dl.delivered_at = t0 + dt.timedelta(seconds=49, milliseconds=500)
                    dl.sent_sop_class_uid = BASIC_TEXT_SR
                session.add(dl)
                session.flush()
                if delivery_state == DeliveryState.FAILED:
                    for k in range(5):
                        session.add(DeliveryAttempt(
                            delivery_id=dl.id, at=t0 + dt.timedelta(seconds=49 + 10 * k),
                            status=0xA700, error="Out of Resources", sop_class_uid=BASIC_TEXT_SR))
                elif delivery_state == DeliveryState.SENT:
                    session.add(DeliveryAttempt(delivery_id=dl.id,
                                                at=t0 + dt.timedelta(seconds=49, milliseconds=500),
                                                status=0x0000, sop_class_uid=BASIC_TEXT_SR))
                deliveries.append(dl)
    session.flush()
    return StudyRows(study=study, instance=instance, job=job, findings=findings,
                     documents=documents, deliveries=deliveries)


#: The finding of each window of :func:`make_windowed_ct_study`: (English label, window).
WINDOWED_FINDINGS = {"right lung": "lung", "heart": "mediastinum"}


def make_windowed_ct_study(session: Session, data_dir: Path) -> StudyRows:
    """Issue 12: a chest CT slice (tests.sr_writer.samples.windowed_chest_ct, in the spool) whose
    right lung was found on the lung window and heart on the mediastinal window, each finding
    linked to a model run of its window (per language), with the Tracking UIDs of
    ``windowed_regions``; ``flush``ed, not committed."""
    from sqlalchemy import select

    from tests.sr_writer.samples import WINDOW_BOXES, windowed_chest_ct, windowed_regions

    rows = make_study(session, data_dir, modality="CT", write_image=False,
                      regions=[r for r in REGIONS if r[0] in WINDOWED_FINDINGS])
    ct = windowed_chest_ct(rows.study.study_instance_uid, rows.instance.series.series_instance_uid,
                           rows.instance.sop_instance_uid)
    (data_dir / rows.instance.path).parent.mkdir(parents=True, exist_ok=True)
    ct.save_as(data_dir / rows.instance.path, enforce_file_format=True)
    tracking = {r.window: r.tracking_uid for r in windowed_regions(ct, "en")}
    for run in session.scalars(select(ModelRun).where(ModelRun.job_id == rows.job.id)).all():
        run.window = "lung"
        heart_run = ModelRun(**{c.key: getattr(run, c.key) for c in ModelRun.__table__.columns if c.key != "id"})
        heart_run.window = "mediastinum"
        session.add(heart_run)
        session.flush()
        for f in rows.findings:
            if f.model_run_id == run.id and WINDOWED_FINDINGS[str(f.code_meaning)] == "mediastinum":
                f.model_run_id = heart_run.id
    for f in rows.findings:
        window = WINDOWED_FINDINGS[str(f.code_meaning)]
        f.px_x1, f.px_y1, f.px_x2, f.px_y2 = WINDOW_BOXES[window]
        f.tracking_uid = tracking[window]
    session.flush()
    return rows
