"""Study completeness (the lead's assembler): versions, and no lost instance under a race."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from workflow.assembler import complete_stable_studies, complete_study, process_now
from common.db import session_scope
from common.models import Instance, Job, Series, Study, StudyState, utcnow


def _study(url: str, n: int, received_ago_s: float = 60) -> int:
    with session_scope(url) as s:
        when = utcnow() - dt.timedelta(seconds=received_ago_s)
        study = Study(study_instance_uid="1.2.3", last_received_at=when)
        s.add(study)
        s.flush()
        series = Series(study_id=study.id, series_instance_uid="1.2.3.1", modality="CT")
        s.add(series)
        s.flush()
        for i in range(n):
            s.add(Instance(study_id=study.id, series_id=series.id, sop_instance_uid=f"1.2.3.1.{i}",
                           sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                           path=f"x{i}", size_bytes=1, sha256="0" * 64))
        return study.id


def test_stable_study_gets_one_job_and_a_quiet_one_none(sqlite_url: str) -> None:
    _study(sqlite_url, 2, received_ago_s=60)
    with session_scope(sqlite_url) as s:
        assert complete_stable_studies(s, stable_after_s=300) == []  # not quiet long enough
    with session_scope(sqlite_url) as s:
        jobs = complete_stable_studies(s, stable_after_s=30)
        assert [(j.study_version, j.instance_count) for j in jobs] == [(1, 2)]
    with session_scope(sqlite_url) as s:
        assert complete_stable_studies(s, stable_after_s=30) == []  # complete: nothing to do
        assert s.scalars(select(Study)).one().state == StudyState.COMPLETE


def test_an_instance_recorded_while_deciding_is_not_lost(sqlite_url: str) -> None:
    """The node records an instance between the assembler's read and its write: no job now,
    the study stays receiving, and the next pass makes a version that includes the instance."""
    study_id = _study(sqlite_url, 1)
    with session_scope(sqlite_url) as s:
        study = s.get_one(Study, study_id)
        seen = study.last_received_at  # the assembler has read the study ...
        with session_scope(sqlite_url) as node:  # ... and the node records a new instance
            late = node.get_one(Study, study_id)
            late.last_received_at = utcnow()
            late.state = StudyState.RECEIVING
        assert seen is not None
        assert complete_study(s, study) is None
    with session_scope(sqlite_url) as s:
        assert s.get_one(Study, study_id).state == StudyState.RECEIVING
        assert s.scalars(select(Job)).all() == []


def test_process_now_forces_a_new_version(sqlite_url: str) -> None:
    _study(sqlite_url, 1)
    with session_scope(sqlite_url) as s:
        job = process_now(s, "1.2.3")
        assert job is not None and job.study_version == 1
    with session_scope(sqlite_url) as s:
        job = process_now(s, "1.2.3")
        assert job is not None and job.study_version == 2


def test_a_changed_instance_makes_a_new_version_and_an_empty_study_none(sqlite_url: str) -> None:
    """Issue 13 case 3: a replaced instance (same count) makes a new version; a study whose
    instances all moved to other studies makes no job (it would have nothing to report)."""
    study_id = _study(sqlite_url, 2)
    with session_scope(sqlite_url) as s:
        assert [j.study_version for j in complete_stable_studies(s, stable_after_s=30)] == [1]
    with session_scope(sqlite_url) as s:  # what dicom_node.ingest does on a changed re-send
        study = s.get_one(Study, study_id)
        study.state, study.instances_changed = StudyState.RECEIVING, True
        study.last_received_at = utcnow() - dt.timedelta(seconds=60)
    with session_scope(sqlite_url) as s:
        jobs = complete_stable_studies(s, stable_after_s=30)
        assert [(j.study_version, j.instance_count) for j in jobs] == [(2, 2)]
        assert s.get_one(Study, study_id).instances_changed is False
    with session_scope(sqlite_url) as s:  # both instances moved away
        for instance in s.scalars(select(Instance)):
            s.delete(instance)
        study = s.get_one(Study, study_id)
        study.state, study.instances_changed = StudyState.RECEIVING, True
        study.last_received_at = utcnow() - dt.timedelta(seconds=60)
    with session_scope(sqlite_url) as s:
        assert complete_stable_studies(s, stable_after_s=30) == []
        assert process_now(s, "1.2.3") is None
        assert s.get_one(Study, study_id).state == StudyState.COMPLETE
