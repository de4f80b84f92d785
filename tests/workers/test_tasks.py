"""Worker stages in-process: idempotent jobs, the outbox, orphan recovery, metrics."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select

from common.db import session_scope
from common.models import (
    Delivery,
    Destination,
    Document,
    ImageSelection,
    Finding,
    Instance,
    Job,
    JobEvent,
    JobState,
    ModelRun,
    Series,
    Study,
    StudyState,
)
from gateway.demo.samples import make_sample_study
from common.settings import Settings, load_settings


#: Answers keyed on the trained instruction of each prompt of the shipped plans (issue 14).
REPLAY_LINES = [
    {"training_set": "grounded_reports_mimiccxr", "answer": "<ref>heart</ref><box>[[400, 450, 700, 800]]</box>: big"},
    {"training_set": "mimiccxr_train_rg", "answer": "Findings: cardiomegaly. Compared to prior, unchanged."},
    {"training_set": "chexpert_train_cls", "answer": "Cardiomegaly"},
    {"training_set": "vindrcxr_train_cls", "answer": "Cardiomegaly"},
    {"training_set": "text2region", "prompt_contains": "<ref>heart</ref>",
     "answer": "<ref>heart</ref><box>[[402, 452, 698, 801]]</box>"},
    {"training_set": "region2text", "answer": "heart"},
    {"language": "zh", "answer": "影像结论：心影增大。"},
]


def received_job(tmp_path: Path, sqlite_url: str, *, replay_lines: list[dict] = REPLAY_LINES,
                 arrival: Callable[[list[Path]], list[Path]] = list,
                 model: dict | None = None) -> tuple[Settings, int]:
    """Settings with a replay model, the received sample study and a complete job for it.

    ``arrival`` orders the sample's files as they are filed (instance rows in that order);
    ``model`` adds model settings (a plans file).
    """
    from workflow.assembler import complete_study
    from model.backends import clear_cache
    from workers.app import configure

    sample = make_sample_study(tmp_path / "study")
    replay = tmp_path / "replay.jsonl"
    replay.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in replay_lines) + "\n",
                      encoding="utf-8")
    settings = load_settings(environ={}, storage={"data_dir": str(tmp_path / "var")},
                             database={"url": sqlite_url},
                             model={"backend": "replay", "path": str(replay), **(model or {})})
    configure(settings)
    clear_cache()
    with session_scope(sqlite_url) as s:
        study = Study(study_instance_uid=sample.study_instance_uid, patient_id=sample.patient_id)
        s.add(study)
        s.add(Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=1))
        s.flush()
        for path in arrival(list(sample.files)):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            series = s.scalar(select(Series).where(Series.series_instance_uid == ds.SeriesInstanceUID))
            if series is None:
                series = Series(study_id=study.id, series_instance_uid=ds.SeriesInstanceUID, modality=ds.Modality,
                                body_part_examined=ds.get("BodyPartExamined"), series_number=ds.get("SeriesNumber"))
                s.add(series)
                s.flush()
            rel = Path("spool") / path.name
            (settings.data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, settings.data_dir / rel)
            s.add(Instance(study_id=study.id, series_id=series.id, sop_instance_uid=ds.SOPInstanceUID,
                           sop_class_uid=ds.SOPClassUID, transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                           instance_number=ds.get("InstanceNumber"),
                           image_position_patient=[float(v) for v in ds.get("ImagePositionPatient", [])] or None,
                           image_orientation_patient=[float(v) for v in ds.get("ImageOrientationPatient", [])] or None,
                           rows=ds.Rows, columns=ds.Columns, path=str(rel), size_bytes=path.stat().st_size,
                           sha256="0" * 64, pixel_spacing=[float(v) for v in ds.get("PixelSpacing", [])] or None))
        s.flush()
        job = complete_study(s, study)
        assert job is not None and study.state == StudyState.COMPLETE
        job_id = job.id
    return settings, job_id


@pytest.fixture
def gateway(tmp_path: Path, sqlite_url: str):
    """Settings with a replay model, a received 3-series study and a complete job for it."""
    return received_job(tmp_path, sqlite_url)


def _counts(url: str, job_id: int) -> tuple[int, int, int, int]:
    with session_scope(url) as s:
        return (s.scalars(select(func.count()).select_from(ModelRun).where(ModelRun.job_id == job_id)).one(),
                s.scalars(select(func.count()).select_from(Finding).where(Finding.job_id == job_id)).one(),
                s.scalars(select(func.count()).select_from(Document).where(Document.job_id == job_id)).one(),
                s.scalars(select(func.count()).select_from(Delivery)).one())


def test_a_job_run_twice_gives_one_set_of_findings_and_one_sr_per_language(gateway, monkeypatch) -> None:
    import workers.tasks as tasks

    settings, job_id = gateway
    published: list[int] = []
    monkeypatch.setattr(tasks, "publish_delivery", published.append)
    assert tasks.run_job(job_id) == "done"
    first = _counts(settings.database_url, job_id)
    # chest PA 7 prompts, lateral 1, 3 CT slices x (report + 4 detections + 1 box described),
    # 3 MR slices x 1 report; localizer and dose sheet left out
    assert first[0] == 7 + 1 + 3 * 6 + 3
    assert first[2] == 2 and first[3] == 2  # one SR per language, one delivery each
    # A redelivered task finds the job past inference and does nothing new.
    assert tasks.run_job(job_id).startswith("skipped")
    # Forced re-run from the start (e.g. an administrator's retry after a crash): same result.
    with session_scope(settings.database_url) as s:
        s.get_one(Job, job_id).state = JobState.QUEUED
    assert tasks.run_job(job_id) == "done"
    assert _counts(settings.database_url, job_id) == first
    with session_scope(settings.database_url) as s:
        regions = s.scalars(select(Finding).where(Finding.kind == "region")).all()
        # English-trained tasks (grounding on the PA film, detection on 3 CT slices) give English regions
        assert {f.language for f in regions} == {"en"} and len(regions) == 4 + 3
        assert all(f.text in ("big", "heart") for f in regions)  # the CT boxes described by region2text
        coded = s.scalars(select(Finding).where(Finding.kind == "classification")).all()
        # CheXpert on PA and lateral, VinDr-CXR on PA: each in both languages, SNOMED CT Cardiomegaly
        assert sorted((f.language, f.code_value, f.code_meaning) for f in coded) == sorted(
            [("en", "287272002", "Cardiomegaly")] * 3 + [("zh", "287272002", "心脏增大")] * 3)
        report = s.scalars(select(Finding).where(Finding.kind == "report", Finding.language == "en")).one()
        assert report.text == "Findings: cardiomegaly."
        run = s.get_one(ModelRun, report.model_run_id)
        assert run.removed_sentences == [{"sentence": "Compared to prior, unchanged.", "reason": "prior_study"}]
        assert run.training_set == "mimiccxr_train_rg" and run.plan == "chest-xray-frontal" and run.view == "frontal"
        selections = s.scalars(select(ImageSelection).where(ImageSelection.job_id == job_id)).all()
        left_out = {sel.reason.split(" (")[0].split(":")[0] for sel in selections if not sel.chosen}
        assert {"localizer", "Secondary Capture", "2 of 5 slices not sent"} <= left_out
        assert sum(sel.chosen for sel in selections) == 2 + 3 + 3
        assert {sel.plan for sel in selections if sel.chosen} == {"chest-xray-frontal", "chest-xray-lateral", "chest-ct", "mr"}
        docs = s.scalars(select(Document).where(Document.job_id == job_id)).all()
        srs = {d.language: pydicom.dcmread(settings.data_dir / d.path) for d in docs}
    assert {ds.CompletionFlag for ds in srs.values()} == {"COMPLETE"}
    # Both SRs carry every region, with one Tracking UID each; the Chinese one marks English text.
    for ds in srs.values():
        text = str(ds.to_json_dict())
        assert text.count("1.2.840.10008") and all(f.tracking_uid is not None and f.tracking_uid in text for f in regions)
    zh = str(srs["zh"].to_json_dict())
    assert "心脏增大" in zh and "影像结论：心影增大。" in zh and "prior" in zh


def test_claim_is_exclusive(gateway) -> None:
    import workers.tasks as tasks

    settings, job_id = gateway
    assert tasks._claim(job_id, lease_s=3600) is True
    assert tasks._claim(job_id, lease_s=3600) is False  # running and fresh: someone else has it
    assert tasks._claim(job_id, lease_s=0) is True  # heartbeat older than the lease: abandoned


def test_outbox_publishes_urgent_first_and_keeps_jobs_when_the_broker_is_down(gateway) -> None:
    from workflow.outbox import publish_pending_jobs

    settings, job_id = gateway
    with session_scope(settings.database_url) as s:
        study = s.scalars(select(Study)).one()
        urgent = Job(study_id=study.id, study_version=2, state=JobState.PENDING, priority=0)
        s.add(urgent)
        s.flush()
        urgent_id = urgent.id

    def broken(job: Job) -> None:
        raise ConnectionError("broker down")

    with session_scope(settings.database_url) as s:
        with pytest.raises(ConnectionError):
            publish_pending_jobs(s, broken)
    with session_scope(settings.database_url) as s:
        assert {j.state for j in s.scalars(select(Job))} == {JobState.PENDING}
    order: list[int] = []
    with session_scope(settings.database_url) as s:
        assert publish_pending_jobs(s, lambda job: order.append(job.id)) == 2
    assert order == [urgent_id, job_id]
    with session_scope(settings.database_url) as s:
        assert {j.state for j in s.scalars(select(Job))} == {JobState.QUEUED}
        assert s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.state == "queued")) == 2


def test_outbox_keeps_the_claim_of_a_worker_faster_than_its_queued_write(gateway) -> None:
    """The broker hands the message to a worker before the outbox records ``queued``: the worker's
    ``running`` claim stands (it was once overwritten, and the worker then dropped its result)."""
    import workers.tasks as tasks
    from workflow.outbox import publish_pending_jobs

    settings, job_id = gateway

    def publish_and_claim(job: Job) -> None:
        assert tasks._claim(job.id, lease_s=3600) is True  # another process, its own session

    with session_scope(settings.database_url) as s:
        assert publish_pending_jobs(s, publish_and_claim) == 1
    with session_scope(settings.database_url) as s:
        assert s.get_one(Job, job_id).state == JobState.RUNNING
        assert s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.state == "queued")) == 0


@pytest.mark.parametrize("left", [JobState.QUEUED, JobState.RUNNING, JobState.FAILED])
def test_embedded_start_requeues_jobs_a_stopped_process_left(gateway, left: JobState) -> None:
    from workflow.outbox import recover_orphaned_work

    settings, job_id = gateway
    with session_scope(settings.database_url) as s:
        s.get_one(Job, job_id).state = left
    published: list[int] = []
    with session_scope(settings.database_url) as s:
        assert recover_orphaned_work(s, lambda job: published.append(job.id)) == 1
    with session_scope(settings.database_url) as s:
        assert s.get_one(Job, job_id).state == JobState.PENDING
    assert published == []  # the dispatcher publishes pending jobs


def test_embedded_start_publishes_an_inferred_job_again(gateway) -> None:
    from workflow.outbox import recover_orphaned_work

    settings, job_id = gateway
    with session_scope(settings.database_url) as s:
        s.get_one(Job, job_id).state = JobState.INFERRED
    published: list[int] = []
    with session_scope(settings.database_url) as s:
        assert recover_orphaned_work(s, lambda job: published.append(job.id)) == 1
    assert published == [job_id]
    with session_scope(settings.database_url) as s:
        assert s.get_one(Job, job_id).state == JobState.INFERRED


def test_metrics_report_what_the_database_recorded(gateway, monkeypatch) -> None:
    from prometheus_client import generate_latest

    import workers.tasks as tasks
    from gateway.metrics import make_registry

    settings, job_id = gateway
    monkeypatch.setattr(tasks, "publish_delivery", lambda _id: None)
    tasks.run_job(job_id)
    text = generate_latest(make_registry(settings.database_url)).decode()
    assert "medrega_instances_received_total 14.0" in text
    assert 'medrega_jobs{state="sr_written"} 1.0' in text
    assert "medrega_inference_seconds_count 29.0" in text
    assert 'medrega_job_stage_seconds_count{stage="inferred"} 1.0' in text


def test_an_unreadable_image_makes_the_srs_partial(gateway, monkeypatch) -> None:
    import workers.tasks as tasks

    settings, job_id = gateway
    monkeypatch.setattr(tasks, "publish_delivery", lambda _id: None)
    with session_scope(settings.database_url) as s:
        ct = s.scalars(select(Instance).where(Instance.path.endswith("ct_1_1.dcm"))).one()  # a chosen slice
        path = settings.data_dir / ct.path
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:100]  # pixel data cut short: the header still reads
    ds.save_as(path)
    assert tasks.run_job(job_id) == "done"
    with session_scope(settings.database_url) as s:
        job = s.get_one(Job, job_id)
        assert job.images_skipped == 1
        assert any("could not read" in (e.detail or "") for e in job.events)
        docs = s.scalars(select(Document).where(Document.job_id == job_id)).all()
        flags = {pydicom.dcmread(settings.data_dir / d.path).CompletionFlag for d in docs}
    assert flags == {"PARTIAL"}


def test_a_worker_that_lost_its_claim_writes_nothing(gateway, monkeypatch) -> None:
    """A worker that stalled past its lease finds the job taken over and drops its results."""
    import workers.tasks as tasks
    from model.analysis import analyse as real_analyse

    settings, job_id = gateway

    def slow_analyse(*args, **kwargs):
        results = real_analyse(*args, **kwargs)
        with session_scope(settings.database_url) as s:  # meanwhile another worker took the job
            s.get(Job, job_id).worker = "other-host:1"
        return results

    monkeypatch.setattr("model.analysis.analyse", slow_analyse)
    assert tasks.process_study.run(job_id) == "skipped (claim lost)"
    assert _counts(settings.database_url, job_id)[:3] == (0, 0, 0)


def test_jobs_whose_message_was_lost_are_published_again(gateway) -> None:
    """A broker that lost its data loses published messages: a queued job never claimed within
    visibility timeout + lease goes back to pending; a recently published one stays queued."""
    import datetime as dt

    from common.models import utcnow
    from workflow.outbox import requeue_lost_messages

    settings, job_id = gateway
    with session_scope(settings.database_url) as s:
        job = s.get_one(Job, job_id)
        job.state, job.published_at = JobState.QUEUED, utcnow() - dt.timedelta(seconds=120)
    with session_scope(settings.database_url) as s:
        assert requeue_lost_messages(s, older_than_s=600) == 0
    with session_scope(settings.database_url) as s:
        assert requeue_lost_messages(s, older_than_s=60) == 1
    with session_scope(settings.database_url) as s:
        job = s.get_one(Job, job_id)
        assert job.state == JobState.PENDING
        assert "published again" in (job.events[-1].detail or "")


def test_a_study_with_no_image_for_the_model_ends_dead_with_its_selection_kept(gateway, monkeypatch) -> None:
    """Retrying cannot choose an image that the rules exclude: the job is dead at once, not retried
    for ever, and the recorded exclusions say why (the study page and the API show them)."""
    import dataclasses

    import model.analysis as analysis
    import workers.tasks as tasks
    from common.models import ImageSelection

    settings, job_id = gateway
    original = analysis.select
    monkeypatch.setattr(analysis, "select",
                        lambda images, cfg: dataclasses.replace(original(images, cfg), chosen=[]))
    assert tasks.process_study.apply(args=(job_id,)).get() == "dead"
    with session_scope(settings.database_url) as s:
        job = s.get_one(Job, job_id)
        assert job.state == JobState.DEAD and "no image of the study was asked anything" in (job.error or "")
        assert s.scalar(select(func.count()).select_from(ImageSelection).where(ImageSelection.job_id == job_id))


def test_a_failing_job_is_retried_with_backoff_then_dead(gateway, monkeypatch) -> None:
    """A failure that may pass is retried by Celery (autoretry_for, retry_backoff; common.retries):
    JOB_MAX_RETRIES retries after 10, 20, 40, 80, 160 s, then the job is dead with the error."""
    import workers.tasks as tasks
    from common.retries import JOB_MAX_RETRIES

    settings, job_id = gateway
    runs: list[int] = []

    def broken(job: int) -> str:
        runs.append(job)
        raise RuntimeError("the model server hiccuped")

    monkeypatch.setattr(tasks, "run_job", broken)
    countdowns: list[int] = []
    real_retry = tasks.process_study.retry

    def retry(*args: object, **kwargs: Any) -> object:
        countdowns.append(kwargs["countdown"])
        return real_retry(*args, **kwargs)

    monkeypatch.setattr(tasks.process_study, "retry", retry)
    assert tasks.process_study.apply(args=(job_id,)).get() == "dead"
    assert runs == [job_id] * (1 + JOB_MAX_RETRIES) and JOB_MAX_RETRIES == 5
    assert countdowns == [10, 20, 40, 80, 160]
    with session_scope(settings.database_url) as s:
        job = s.get(Job, job_id)
        assert job is not None and job.state == JobState.DEAD and "hiccuped" in (job.error or "")


def test_each_sr_region_names_the_window_its_model_run_used(tmp_path: Path, sqlite_url: str, monkeypatch) -> None:
    """Issue 12: the chest CT plan finds the lungs on the lung window and the heart on the
    mediastinal window; each SR region carries its run's window (TID 4019 Algorithm Parameters),
    so ``render`` and the presentation states can show it on the picture it was found on."""
    import workers.tasks as tasks
    from sr_writer.readback import read_report

    lines = [{"training_set": "text2region", "prompt_contains": "<ref>right lung</ref>",
              "answer": "<ref>right lung</ref><box>[[100, 200, 450, 800]]</box>"},
             *REPLAY_LINES]
    settings, job_id = received_job(tmp_path, sqlite_url, replay_lines=lines)
    monkeypatch.setattr(tasks, "publish_delivery", lambda _: None)
    assert tasks.run_job(job_id) == "done"
    with session_scope(settings.database_url) as s:
        window_of = {f.tracking_uid: s.get_one(ModelRun, f.model_run_id).window
                     for f in s.scalars(select(Finding).where(Finding.kind == "region", Finding.job_id == job_id))}
        docs = s.scalars(select(Document).where(Document.job_id == job_id)).all()
        paths = [settings.data_dir / d.path for d in docs]
    assert set(window_of.values()) >= {"lung", "mediastinum"}  # both windows found something
    for path in paths:
        regions = read_report(pydicom.dcmread(path)).regions
        assert {r.tracking_uid: r.window for r in regions} == window_of
