"""Instances after a study was processed make a new version that references the previous SRs;
an identical re-sent instance makes none (issue 3, study completeness)."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from gateway.db import session_scope
from gateway.models import Job, JobState
from gateway.samples import make_sample_study
from tests.e2e.harness import StoreSCP, cli, free_port, gateway_process, port_open, wait_for, write_config, write_replay
from tests.e2e.test_end_to_end import _storescu

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def test_late_instance_makes_version_two_with_predecessor(tmp_path: Path) -> None:
    first = make_sample_study(tmp_path / "study", n_radiographs=1)
    later = make_sample_study(tmp_path / "later", n_radiographs=2)  # same seed: same study, one more CR
    extra = [f for f in later.files if f.name == "cr_2.dcm"]
    assert later.study_instance_uid == first.study_instance_uid
    replay = write_replay(tmp_path / "replay.jsonl", [
        {"language": "en", "prompt_contains": "<ref>", "answer": "<ref>heart</ref><box>[[400, 450, 700, 800]]</box>"},
        {"language": "zh", "prompt_contains": "<ref>", "answer": "<ref>心脏</ref><box>[[400, 450, 700, 800]]</box>"},
        {"language": "en", "answer": "Findings: unremarkable."},
        {"language": "zh", "answer": "影像结论：未见明显异常。"},
    ])
    node_port, pacs_port = free_port(), free_port()
    pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
    config = write_config(tmp_path, node_port=node_port, backend="replay", model_path=str(replay),
                          destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}])
    cli(config, "db", "upgrade")
    serve = gateway_process(config, "serve", tmp_path / "serve.log").start()
    url = f"sqlite:///{tmp_path / 'var' / 'gateway.db'}"

    def jobs_delivered(n: int):
        def check() -> bool:
            with session_scope(url) as s:
                jobs = s.scalars(select(Job).order_by(Job.id)).all()
                assert not any(j.state == JobState.DEAD for j in jobs), [j.error for j in jobs]
                return len(jobs) == n and all(j.state == JobState.DELIVERED for j in jobs)
        return check

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
