"""Instances after a study was processed make a new version that references the previous SRs;
an identical re-sent instance makes none (issue 3, study completeness)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from common.db import session_scope
from common.models import Job, JobState
from gateway.demo.samples import make_sample_study
from tests.e2e.harness import (
    Process,
    StoreSCP,
    cli,
    free_port,
    gateway_process,
    port_open,
    wait_for,
    write_config,
    write_replay,
)
from tests.e2e.test_end_to_end import _storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow]


@dataclass
class _Running:
    """``serve`` on embedded defaults with the replay backend, and a storescp PACS."""

    node_port: int
    serve: Process
    pacs: StoreSCP
    url: str

    def delivered(self, n: int) -> Callable[[], bool]:
        """A wait condition: ``n`` jobs, all delivered (a dead or cancelled one fails at once)."""
        def check() -> bool:
            with session_scope(self.url) as s:
                jobs = s.scalars(select(Job).order_by(Job.id)).all()
                assert not any(j.state in (JobState.DEAD, JobState.CANCELLED) for j in jobs), \
                    [(j.state, j.error) for j in jobs]
                return len(jobs) == n and all(j.state == JobState.DELIVERED for j in jobs)
        return check


def _start(tmp_path: Path, replay_lines: list[dict]) -> _Running:
    replay = write_replay(tmp_path / "replay.jsonl", replay_lines)
    node_port, pacs_port = free_port(), free_port()
    pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
    config = write_config(tmp_path, node_port=node_port, backend="replay", model_path=str(replay),
                          destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}])
    cli(config, "db", "upgrade")
    serve = gateway_process(config, "serve", tmp_path / "serve.log").start()
    return _Running(node_port, serve, pacs, f"sqlite:///{tmp_path / 'var' / 'gateway.db'}")


def test_late_instance_makes_version_two_with_predecessor(tmp_path: Path) -> None:
    first = make_sample_study(tmp_path / "study", n_radiographs=1)
    later = make_sample_study(tmp_path / "later", n_radiographs=2)  # same seed: same study, one more CR
    extra = [f for f in later.files if f.name == "cr_2.dcm"]
    assert later.study_instance_uid == first.study_instance_uid
    run = _start(tmp_path, [
        {"language": "en", "prompt_contains": "<ref>", "answer": "<ref>heart</ref><box>[[400, 450, 700, 800]]</box>"},
        {"language": "zh", "prompt_contains": "<ref>", "answer": "<ref>心脏</ref><box>[[400, 450, 700, 800]]</box>"},
        {"language": "en", "answer": "Findings: unremarkable."},
        {"language": "zh", "answer": "影像结论：未见明显异常。"},
    ])
    node_port, serve, pacs, url, jobs_delivered = run.node_port, run.serve, run.pacs, run.url, run.delivered
    try:
        wait_for(lambda: port_open(node_port), 60, "the node", [serve])
        _storescu(node_port, first.files)
        wait_for(jobs_delivered(1), 180, "version 1", [serve, pacs])
        # The same instances again: success, nothing new to process.
        _storescu(node_port, first.files)
        time.sleep(3)
        with session_scope(url) as s:
            assert len(s.scalars(select(Job)).all()) == 1, "an identical re-send made a new version"
        _storescu(node_port, extra)
        wait_for(jobs_delivered(2), 180, "version 2", [serve, pacs])
        time.sleep(1)
    finally:
        serve.stop()
        pacs.stop()
    srs = [pydicom.dcmread(f) for f in pacs.files()]
    assert len(srs) == 4, "two versions x two languages"
    by_uid = {ds.SOPInstanceUID: ds for ds in srs}
    second = [ds for ds in srs if "PredecessorDocumentsSequence" in ds]
    assert len(second) == 2
    for ds in second:
        ref = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        previous = by_uid[ref.ReferencedSOPInstanceUID]
        assert "PredecessorDocumentsSequence" not in previous
        assert previous.SeriesInstanceUID != ds.SeriesInstanceUID
        # The same language: the Chinese version 2 replaces the Chinese version 1.
        assert previous.SeriesDescription.split("(")[1][:2] == ds.SeriesDescription.split("(")[1][:2]
        evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                    for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}
        assert pydicom.dcmread(extra[0], stop_before_pixels=True).SOPInstanceUID in evidence



def test_a_changed_resend_makes_version_two_and_a_moved_instance_keeps_both_studies(tmp_path: Path) -> None:
    """Issue 13 case 3 through the running node (DCMTK storescu) to a DCMTK storescp PACS: the
    study re-sent with a corrected patient name replaces its instances (same number of them) and
    makes version 2, whose SRs name the corrected patient and reference version 1 (Predecessor
    Documents Sequence); then one instance re-sent into another study moves there: the first study
    makes version 3 without it, the other study its version 1, and nothing fails."""
    import hashlib

    from common.models import InstanceReplacement, Study
    from dicom_node.spool import data_set_offset

    sample = make_sample_study(tmp_path / "study", n_radiographs=2)
    run = _start(tmp_path, [
        {"language": "en", "answer": "Findings: unremarkable."},
        {"language": "zh", "answer": "影像结论：未见明显异常。"},
    ])
    node_port, serve, pacs, url, delivered = run.node_port, run.serve, run.pacs, run.url, run.delivered
    data_dir = tmp_path / "var"

    def write(name: str, ds: pydicom.Dataset) -> Path:
        path = tmp_path / "resent" / name
        path.parent.mkdir(exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return path

    corrected = []
    for path in sample.files:
        ds = pydicom.dcmread(path)
        ds.PatientName = "Corrected^Name"
        corrected.append(write(path.name, ds))
    moving = pydicom.dcmread(corrected[-1])
    moved_uid, other_study = moving.SOPInstanceUID, pydicom.uid.generate_uid()
    moving.StudyInstanceUID, moving.SeriesInstanceUID = other_study, pydicom.uid.generate_uid()
    try:
        wait_for(lambda: port_open(node_port), 60, "the node", [serve])
        _storescu(node_port, sample.files)
        wait_for(delivered(1), 180, "version 1", [serve, pacs])
        _storescu(node_port, corrected)
        wait_for(delivered(2), 180, "version 2", [serve, pacs])
        _storescu(node_port, [write("moved.dcm", moving)])
        wait_for(delivered(4), 180, "version 3 and the other study's version 1", [serve, pacs])
        time.sleep(1)
    finally:
        serve.stop()
        pacs.stop()

    with session_scope(url) as s:
        first = s.scalars(select(Study).where(Study.study_instance_uid == sample.study_instance_uid)).one()
        assert (first.version, str(first.patient_name)) == (3, "Corrected^Name")
        assert s.scalars(select(Study).where(Study.study_instance_uid == other_study)).one().version == 1
        replacements = s.scalars(select(InstanceReplacement).order_by(InstanceReplacement.id)).all()
        assert len(replacements) == len(sample.files) + 1
        assert [r.sop_instance_uid for r in replacements if r.moved] == [moved_uid]
        for r in replacements:  # the replaced bytes are kept, as they were received
            assert r.kept_path is not None
            kept = (data_dir / r.kept_path).read_bytes()
            assert r.kept_path.startswith("replaced/")
            data_set = kept[data_set_offset(data_dir / r.kept_path):]  # the recorded hash is the data set's
            assert (hashlib.sha256(data_set).hexdigest(), len(kept)) == (r.previous_sha256, r.previous_size_bytes)
    assert not list((data_dir / "spool" / sample.study_instance_uid).rglob(f"{moved_uid}.dcm"))

    srs = [pydicom.dcmread(f) for f in pacs.files()]
    assert len(srs) == 8, "study 1 versions 1-3, study 2 version 1, x two languages"
    by_uid = {ds.SOPInstanceUID: ds for ds in srs}

    def evidence(ds: pydicom.Dataset) -> set[str]:
        return {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for i in series.ReferencedSOPSequence}

    def predecessor(ds: pydicom.Dataset) -> pydicom.Dataset:
        ref = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        return by_uid[ref.ReferencedSOPInstanceUID]

    originals = [ds for ds in srs if str(ds.PatientName) == "Demo^Patient"]
    assert len(originals) == 2 and not any("PredecessorDocumentsSequence" in ds for ds in originals)
    version_two = [ds for ds in srs if "PredecessorDocumentsSequence" in ds and predecessor(ds) in originals]
    assert len(version_two) == 2
    for ds in version_two:
        assert str(ds.PatientName) == "Corrected^Name"
        assert evidence(ds) == evidence(predecessor(ds)) and moved_uid in evidence(ds)
    version_three = [ds for ds in srs if "PredecessorDocumentsSequence" in ds and predecessor(ds) in version_two]
    assert len(version_three) == 2
    for ds in version_three:
        assert ds.StudyInstanceUID == sample.study_instance_uid
        assert evidence(ds) == evidence(predecessor(ds)) - {moved_uid}
    moved_srs = [ds for ds in srs if ds.StudyInstanceUID == other_study]
    assert len(moved_srs) == 2 and all(evidence(ds) == {moved_uid} for ds in moved_srs)
