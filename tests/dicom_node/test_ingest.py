"""record_instance: the common case (a new instance of a series already filed) runs on the
DBAPI cursor (dicom_node.statements); its rows must be what SQLAlchemy's own path writes."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import delete, select

from dicom_node import ingest
from dicom_node.header import InstanceHeader
from dicom_node.ingest import IngestOutcome, record_instance
from common.db import make_engine, session_scope, upgrade
from common.models import Instance, InstanceReplacement, Series, Study, StudyState

_COLUMNS = (
    "sop_class_uid", "transfer_syntax_uid", "rows", "columns", "number_of_frames",
    "image_orientation_patient", "pixel_spacing", "size_bytes", "calling_ae_title", "duplicate_count",
)


def _header(study: str, series: str, number: int) -> InstanceHeader:
    return InstanceHeader(
        study_instance_uid=study, series_instance_uid=series,
        sop_instance_uid=pydicom.uid.generate_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", patient_id="P1", patient_name="Doe^J",
        modality="CT", series_number=3, instance_number=number, rows=512, columns=512,
        number_of_frames=None, image_position_patient=[-125.0, -125.5, 10.0 * number],
        image_orientation_patient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], pixel_spacing=[0.488281, 0.488281],
    )


def _file(url: str, data_dir: Path, header: InstanceHeader, n: int):
    received = data_dir / "incoming" / f"rx-{n}.dcm"
    received.parent.mkdir(parents=True, exist_ok=True)
    received.write_bytes(b"instance %d" % n)
    return record_instance(make_engine(url), data_dir, header, received, sha256=f"{n:064x}",
                           size_bytes=10, calling_ae_title="MODALITY1")


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> str:
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    url = request.getfixturevalue("postgres_url")
    upgrade(url)
    return url


def test_the_common_case_writes_what_sqlalchemy_writes(database_url, tmp_path, monkeypatch):
    direct = []
    real_insert = ingest._CommonCase.insert
    monkeypatch.setattr(ingest._CommonCase, "insert",
                        lambda self, *a, **k: direct.append(1) or real_insert(self, *a, **k))
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    first, second = _header(study, series, 1), _header(study, series, 2)
    a = _file(database_url, tmp_path, first, 1)  # series unknown: SQLAlchemy's path
    assert direct == []
    b = _file(database_url, tmp_path, second, 2)  # series cached: the DBAPI statements
    assert direct == [1]
    assert (a.outcome, b.outcome) == (IngestOutcome.STORED, IngestOutcome.STORED)
    with session_scope(database_url) as s:
        rows = {r.instance_number: r for r in s.scalars(select(Instance))}
        assert set(rows) == {1, 2}
        for column in _COLUMNS:  # the same in both headers: the same in both rows
            assert getattr(rows[2], column) == getattr(rows[1], column), column
        assert rows[1].image_position_patient == first.image_position_patient
        assert rows[2].image_position_patient == second.image_position_patient
        assert rows[2].pixel_spacing == second.pixel_spacing
        assert rows[2].sha256 == f"{2:064x}" and rows[2].path == b.relpath
        assert rows[2].received_at >= rows[1].received_at
        assert (rows[2].study_id, rows[2].series_id) == (rows[1].study_id, rows[1].series_id)
        study_row = s.get(Study, rows[2].study_id)
        assert study_row.state is StudyState.RECEIVING
        assert study_row.last_received_at == rows[2].received_at


def test_a_stale_cached_series_falls_back_to_the_general_path(database_url, tmp_path):
    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    _file(database_url, tmp_path, _header(study, series, 1), 1)
    with session_scope(database_url) as s:  # the study is deleted meanwhile (its cache entry stays)
        s.execute(delete(Instance))
        s.execute(delete(Series))
        s.execute(delete(Study))
    result = _file(database_url, tmp_path, _header(study, series, 2), 2)
    assert result.outcome is IngestOutcome.STORED
    with session_scope(database_url) as s:
        (row,) = s.scalars(select(Instance)).all()
        assert row.instance_number == 2
        assert s.get(Study, row.study_id).study_instance_uid == study
        assert s.get(Series, row.series_id).series_instance_uid == series


def test_conflicts_are_tried_again_a_bounded_number_of_times(database_url, tmp_path, monkeypatch):
    """A new instance's row that meets a conflict on every attempt (here a cached series that is
    gone, found again each time) is tried INGEST_CONFLICT_ATTEMPTS times, then an IngestError."""
    from common.retries import INGEST_CONFLICT_ATTEMPTS
    from dicom_node.statements import database_errors

    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    header = _header(study, series, 1)
    dropped = []
    monkeypatch.setattr(ingest._SERIES_CACHE, "get", lambda url, h: (987654, 987654))  # no such rows
    monkeypatch.setattr(ingest._SERIES_CACHE, "drop", lambda url, h: dropped.append(h.sop_instance_uid))
    with pytest.raises(ingest.IngestError, match="conflicting concurrent writes") as info:
        _file(database_url, tmp_path, header, 1)
    assert dropped == [header.sop_instance_uid] * INGEST_CONFLICT_ATTEMPTS == [header.sop_instance_uid] * 4
    assert isinstance(info.value.__cause__, database_errors(make_engine(database_url))[0])  # the last conflict
    with session_scope(database_url) as s:
        assert s.scalars(select(Instance)).all() == []


def _resend(url: str, data_dir: Path, header: InstanceHeader, content: bytes):
    import hashlib

    received = data_dir / "incoming" / "rx-resend.dcm"
    received.write_bytes(content)
    return record_instance(make_engine(url), data_dir, header, received,
                           sha256=hashlib.sha256(content).hexdigest(), size_bytes=len(content),
                           calling_ae_title="MODALITY2")


def test_a_changed_resend_replaces_the_instance_and_keeps_the_old_bytes(database_url, tmp_path):
    """Issue 13 case 3: other content under a filed SOP Instance UID is a correction."""
    import dataclasses

    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    first = _header(study, series, 1)
    filed = _file(database_url, tmp_path, first, 1)
    with session_scope(database_url) as s:  # version 1 was decided
        s.get(Study, filed.study_id).state = StudyState.COMPLETE
    corrected = dataclasses.replace(first, patient_name="Doe^Jane", patient_id="P2", rows=256)
    result = _resend(database_url, tmp_path, corrected, b"corrected instance")
    assert (result.outcome, result.instance_id, result.relpath) == (
        IngestOutcome.REPLACED, filed.instance_id, filed.relpath)
    assert (tmp_path / result.relpath).read_bytes() == b"corrected instance"
    with session_scope(database_url) as s:
        (row,) = s.scalars(select(Instance)).all()
        assert (row.rows, row.size_bytes, row.calling_ae_title) == (256, 18, "MODALITY2")
        study_row = s.get(Study, row.study_id)
        assert (study_row.patient_name, study_row.patient_id) == ("Doe^Jane", "P2")
        assert study_row.state is StudyState.RECEIVING and study_row.instances_changed
        (replacement,) = s.scalars(select(InstanceReplacement)).all()
        assert (replacement.instance_id, replacement.previous_sha256, replacement.previous_size_bytes,
                replacement.moved) == (row.id, f"{1:064x}", 10, False)
        assert replacement.kept_path.startswith(f"replaced/{study}/{series}/{first.sop_instance_uid}.")
        assert (tmp_path / replacement.kept_path).read_bytes() == b"instance 1"
    # The same corrected content again: a duplicate, nothing replaced.
    again = _resend(database_url, tmp_path, corrected, b"corrected instance")
    assert again.outcome is IngestOutcome.DUPLICATE
    with session_scope(database_url) as s:
        assert len(s.scalars(select(InstanceReplacement)).all()) == 1
        assert s.scalars(select(Instance)).one().duplicate_count == 1


def test_an_instance_resent_into_another_study_moves_and_both_studies_change(database_url, tmp_path):
    import dataclasses

    old_study, old_series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    moving, staying = _header(old_study, old_series, 1), _header(old_study, old_series, 2)
    before = _file(database_url, tmp_path, moving, 1)
    _file(database_url, tmp_path, staying, 2)
    with session_scope(database_url) as s:
        s.get(Study, before.study_id).state = StudyState.COMPLETE
    new_study, new_series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    moved = dataclasses.replace(moving, study_instance_uid=new_study, series_instance_uid=new_series)
    result = _resend(database_url, tmp_path, moved, b"moved instance")
    assert result.outcome is IngestOutcome.REPLACED and result.study_id != before.study_id
    assert not (tmp_path / before.relpath).exists(), "the old spool file is not left behind"
    assert (tmp_path / result.relpath).read_bytes() == b"moved instance"
    with session_scope(database_url) as s:
        row = s.get(Instance, before.instance_id)
        assert row.study.study_instance_uid == new_study and row.series.series_instance_uid == new_series
        assert row.path == result.relpath
        for study_id in (before.study_id, result.study_id):
            changed = s.get(Study, study_id)
            assert changed.state is StudyState.RECEIVING and changed.instances_changed
        (replacement,) = s.scalars(select(InstanceReplacement)).all()
        assert replacement.moved
        assert (replacement.previous_study_id, replacement.study_id) == (before.study_id, result.study_id)
        assert (tmp_path / replacement.kept_path).read_bytes() == b"instance 1"
        left = s.scalars(select(Instance).where(Instance.study_id == before.study_id)).all()
        assert [r.instance_number for r in left] == [2]


def test_an_instance_whose_file_retention_removed_is_filed_again_when_resent(database_url, tmp_path):
    """Spool retention (issue 17) removes a delivered study's files and keeps its rows: sending
    the study again is how it is processed again, so an identical re-send of a pruned instance is
    filed (not counted as a duplicate) and its study receives a new version; once every pruned
    instance is back the study no longer says its images were removed."""
    from common.models import utcnow

    study, series = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    first, second = _header(study, series, 1), _header(study, series, 2)
    a, b = _file(database_url, tmp_path, first, 1), _file(database_url, tmp_path, second, 2)
    assert a.study_id == b.study_id
    pruned_at = utcnow()
    with session_scope(database_url) as s:  # what workflow.retention.prune_spool leaves
        s.get(Study, a.study_id).state = StudyState.COMPLETE
        s.get(Study, a.study_id).images_pruned_at = pruned_at
        for row in s.scalars(select(Instance)):
            row.pruned_at = pruned_at
            (tmp_path / row.path).unlink()

    again = _file(database_url, tmp_path, first, 1)  # the same content as filed
    assert (again.outcome, again.instance_id, again.relpath) == (IngestOutcome.STORED, a.instance_id, a.relpath)
    assert (tmp_path / a.relpath).read_bytes() == b"instance 1"
    with session_scope(database_url) as s:
        row = s.get(Instance, a.instance_id)
        assert row.pruned_at is None and row.duplicate_count == 0
        study_row = s.get(Study, a.study_id)
        assert study_row.state is StudyState.RECEIVING and study_row.instances_changed
        assert study_row.images_pruned_at == pruned_at  # instance 2 is still missing
        assert s.scalars(select(InstanceReplacement)).all() == []
    assert _file(database_url, tmp_path, second, 2).outcome is IngestOutcome.STORED
    with session_scope(database_url) as s:
        assert s.get(Study, a.study_id).images_pruned_at is None
        assert [r.pruned_at for r in s.scalars(select(Instance))] == [None, None]
    # Filed again, a further identical re-send is a duplicate as before.
    assert _file(database_url, tmp_path, second, 2).outcome is IngestOutcome.DUPLICATE
