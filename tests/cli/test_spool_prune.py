"""Spool retention (issue 17): ``medrega-gateway spool prune [--dry-run]`` through the real CLI.

A study's images go ``storage.retention_days`` after its results reached every destination, never
before: not while a job is unfinished, a delivery pending or failed, the study receiving or only
stored. The rows stay and say when the images went; a re-run refuses with that reason; the
removal is audited; the spool gauge drops; ``serve``'s dispatcher applies the same policy.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import generate_latest
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import session_scope
from common.models import (
    AuditEvent,
    Delivery,
    DeliveryState,
    Document,
    Instance,
    InstanceReplacement,
    Job,
    JobEvent,
    JobState,
    QuarantinedInstance,
    Series,
    Study,
    StudyState,
    utcnow,
)
from common.settings import load_settings
from gateway.metrics import make_registry
from tests.e2e.harness import cli, free_port, write_config

NOW = utcnow()
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _file(data_dir: Path, relpath: str, size: int) -> None:
    path = data_dir / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)


def _study(session: Session, data_dir: Path, uid: str, *, state: StudyState = StudyState.COMPLETE,
           jobs: Sequence[tuple[JobState, list[DeliveryState], int | None]] = (),
           files: int = 2, size: int = 1000) -> Study:
    """A study with ``files`` spooled instances and one job per ``(state, deliveries, delivered days ago)``."""
    study = Study(study_instance_uid=uid, state=state, version=len(jobs),
                  first_received_at=NOW - dt.timedelta(days=90), last_received_at=NOW - dt.timedelta(days=90))
    session.add(study)
    session.flush()
    series = Series(study_id=study.id, series_instance_uid=f"{uid}.1", modality="CT")
    session.add(series)
    session.flush()
    for n in range(files):
        relpath = f"spool/{uid}/{uid}.1/{uid}.1.{n}.dcm"
        _file(data_dir, relpath, size)
        session.add(Instance(study_id=study.id, series_id=series.id, sop_instance_uid=f"{uid}.1.{n}",
                             sop_class_uid=CT_IMAGE, transfer_syntax_uid="1.2.840.10008.1.2.1",
                             path=relpath, size_bytes=size, sha256="0" * 64))
    for version, (job_state, deliveries, delivered_days_ago) in enumerate(jobs, start=1):
        job = Job(study_id=study.id, study_version=version, state=job_state, destinations=["pacs"])
        session.add(job)
        session.flush()
        if delivered_days_ago is not None:
            session.add(JobEvent(job_id=job.id, state=JobState.DELIVERED.value,
                                 at=NOW - dt.timedelta(days=delivered_days_ago)))
        document = Document(job_id=job.id, kind="sr", language="en", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                            sop_instance_uid=f"{uid}.9.{version}", series_instance_uid=f"{uid}.9",
                            path=f"results/{uid}/{version}.dcm")
        session.add(document)
        session.flush()
        for n, delivery_state in enumerate(deliveries):
            session.add(Delivery(document_id=document.id, destination_name=f"pacs{n}", state=delivery_state))
    session.flush()
    return study


def _query(event: AuditEvent) -> dict[str, Any]:
    assert event.query is not None
    return cast(dict[str, Any], json.loads(event.query))


def _spool_gauge(url: str) -> dict[str, float]:
    text = generate_latest(make_registry(url)).decode()
    return {m[0]: float(m[1]) for m in re.findall(r'^medrega_spool_bytes\{area="(\w+)"\} (\S+)$', text, re.M)}


def _setup(tmp_path: Path, database_url: str = "", **storage: object) -> tuple[Path, Path, str]:
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[],
                          database_url=database_url, sections={"storage": storage} if storage else None)
    cli(config, "db", "upgrade")
    settings = load_settings(config, environ={})
    return config, settings.data_dir, settings.database_url


SENT, PENDING, FAILED = DeliveryState.SENT, DeliveryState.PENDING, DeliveryState.FAILED


def _corpus(data_dir: Path, url: str) -> None:
    with session_scope(url) as s:
        old = _study(s, data_dir, "1.1", jobs=[(JobState.DEAD, [], None), (JobState.DELIVERED, [SENT, SENT], 40)])
        moved = s.scalars(select(Instance).where(Instance.study_id == old.id)).all()[0]
        _file(data_dir, "replaced/1.1/1.1.1/1.1.1.0.20260101T000000.dcm", 700)
        s.add(InstanceReplacement(instance_id=moved.id, sop_instance_uid=moved.sop_instance_uid,
                                  previous_study_id=old.id, study_id=old.id, previous_sha256="1" * 64,
                                  previous_size_bytes=700,
                                  kept_path="replaced/1.1/1.1.1/1.1.1.0.20260101T000000.dcm"))
        _study(s, data_dir, "1.2", jobs=[(JobState.DELIVERED, [SENT], 10)])  # too recent
        _study(s, data_dir, "1.3", jobs=[(JobState.DELIVERED, [SENT], 40), (JobState.SR_WRITTEN, [PENDING], None)])
        _study(s, data_dir, "1.4", jobs=[(JobState.DELIVERED, [FAILED], 40), (JobState.DELIVERED, [SENT], 40)])
        _study(s, data_dir, "1.5", jobs=[(JobState.DEAD, [], None)])  # never delivered
        _study(s, data_dir, "1.6", state=StudyState.STORED)  # only stored: nothing to deliver
        _study(s, data_dir, "1.7", state=StudyState.RECEIVING, jobs=[(JobState.DELIVERED, [SENT], 40)])
        _study(s, data_dir, "1.8", jobs=[(JobState.DELIVERED, [SENT], 40), (JobState.RUNNING, [], None)])
        _file(data_dir, "quarantine/20260101/q.dcm", 300)
        s.add(QuarantinedInstance(path="quarantine/20260101/q.dcm", reason="not DICOM",
                                  received_at=NOW - dt.timedelta(days=400)))


def test_prune_removes_only_studies_delivered_long_enough_ago(tmp_path: Path) -> None:
    _prune_and_refuse_rerun(tmp_path, "")


@pytest.mark.postgres
def test_prune_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    _prune_and_refuse_rerun(tmp_path, postgres_url)


def _prune_and_refuse_rerun(tmp_path: Path, database_url: str) -> None:
    config, data_dir, url = _setup(tmp_path, database_url)  # storage.retention_days: the default, 30
    _corpus(data_dir, url)
    spool_files = sorted(p for p in (data_dir / "spool").rglob("*.dcm"))
    assert len(spool_files) == 16
    before = _spool_gauge(url)
    assert before == {"spool": 16 * 1000.0, "replaced": 700.0}

    dry = cli(config, "spool", "prune", "--dry-run")
    assert re.search(r"^1\.1 +delivered \S+ \S+ UTC +3 files +2700 bytes$", dry.stdout, re.M), dry.stdout
    assert "would remove 3 files, 2700 bytes (0.0 MB) of 1 studies delivered more than 30 days ago" in dry.stdout
    for uid in ("1.2", "1.3", "1.4", "1.5", "1.6", "1.7", "1.8"):
        assert f"\n{uid} " not in "\n" + dry.stdout
    assert sorted(p for p in (data_dir / "spool").rglob("*.dcm")) == spool_files  # nothing removed
    with session_scope(url) as s:
        assert s.scalars(select(AuditEvent)).all() == []  # a dry run changes nothing

    done = cli(config, "spool", "prune")
    assert "removed 3 files, 2700 bytes (0.0 MB) of 1 studies delivered more than 30 days ago" in done.stdout
    assert not (data_dir / "spool" / "1.1").exists()  # its emptied folders too
    assert not (data_dir / "replaced" / "1.1").exists()
    assert len(list((data_dir / "spool").rglob("*.dcm"))) == 14
    assert (data_dir / "quarantine/20260101/q.dcm").is_file()  # quarantine_retention_days = 0: kept
    with session_scope(url) as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == "1.1")).one()
        assert study.images_pruned_at is not None and abs((study.images_pruned_at - utcnow()).total_seconds()) < 60
        instances = s.scalars(select(Instance).where(Instance.study_id == study.id)).all()
        assert len(instances) == 2 and all(i.pruned_at == study.images_pruned_at for i in instances)
        assert s.scalars(select(InstanceReplacement.pruned_at)).one() == study.images_pruned_at
        others = s.scalars(select(Study).where(Study.study_instance_uid != "1.1")).all()
        assert [o.images_pruned_at for o in others] == [None] * 7
        event = s.scalars(select(AuditEvent)).one()
        assert (event.action, event.outcome, event.role) == ("admin.spool.prune", "success", "cli")
        subject = _query(event)["subject"]
        assert subject["studies"] == ["1.1"] and subject["files"] == 3 and subject["bytes"] == 2700
        pruned_job = s.scalars(select(Job.id).where(Job.study_id == study.id, Job.state == JobState.DEAD)).one()
    assert _spool_gauge(url) == {"spool": 14 * 1000.0, "replaced": 0.0}

    again = cli(config, "spool", "prune")
    assert "removed 0 files, 0 bytes (0.0 MB) of 0 studies" in again.stdout

    # A re-run explains why it cannot run: the CLI's retry and `study process`.
    retry = cli(config, "jobs", "retry", str(pruned_job), check=False)
    assert retry.returncode == 1
    assert "the images of study 1.1 were removed by retention on" in retry.stderr
    assert "Traceback" not in retry.stderr
    process = cli(config, "study", "process", "1.1", check=False)
    assert process.returncode == 1 and "removed by retention on" in process.stderr
    with session_scope(url) as s:
        refused = s.scalars(select(AuditEvent).where(AuditEvent.action == "admin.job.retry")).one()
        assert refused.outcome == "failure" and "removed by retention" in _query(refused)["error"]
        assert s.scalars(select(Job.state).where(Job.id == pruned_job)).one() == JobState.DEAD


def test_retention_zero_keeps_for_ever_and_quarantine_has_its_own_setting(tmp_path: Path) -> None:
    config, data_dir, url = _setup(tmp_path, "", retention_days=0, quarantine_retention_days=365)
    _corpus(data_dir, url)
    done = cli(config, "spool", "prune")
    assert "storage.retention_days = 0: studies' images are kept for ever" in done.stdout
    assert "removed 0 files, 0 bytes (0.0 MB) of 0 studies" in done.stdout
    assert "removed 1 quarantined files, 300 bytes (0.0 MB) older than 365 days" in done.stdout
    assert len(list((data_dir / "spool").rglob("*.dcm"))) == 16
    assert not (data_dir / "quarantine/20260101").exists()
    with session_scope(url) as s:
        assert s.scalars(select(QuarantinedInstance.pruned_at)).one() is not None
        assert s.scalars(select(QuarantinedInstance.path)).one() == "quarantine/20260101/q.dcm"  # the row stays


def test_serve_dispatcher_applies_retention_and_audits_it(tmp_path: Path) -> None:
    from workers.dispatcher import RETENTION_ACTOR, Dispatcher

    config, data_dir, url = _setup(tmp_path, "", retention_days=35)
    _corpus(data_dir, url)
    dispatcher = Dispatcher(load_settings(config, environ={}))
    first = dispatcher.run_once()
    assert first.files_pruned == 3
    assert dispatcher.run_once().files_pruned == 0  # the next pass is an hour later
    assert not (data_dir / "spool" / "1.1").exists() and (data_dir / "spool" / "1.2").exists()
    with session_scope(url) as s:
        event = s.scalars(select(AuditEvent)).one()
        assert (event.action, event.actor, event.role) == ("spool.prune", RETENTION_ACTOR, "system")
        assert _query(event)["subject"]["files"] == 3
