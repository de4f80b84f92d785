"""Issue 7, load: many simultaneous associations into one ``serve``, everything stored and delivered.

``MEDREGA_TEST_LOAD`` = ``<associations>x<instances each>`` (default ``20x200``, the issue's figure:
4000 small CT instances, one study per association, sent by as many ``storescu`` processes at
once). ``serve`` runs on embedded defaults (SQLite, embedded broker, worker inside) with the
replay model. Checks: every instance stored, one SR per language delivered for every study, and
the serve process's resident memory (sampled with psutil, children included) stays under
``MEDREGA_TEST_LOAD_RSS_MB`` (600). Prints instances/s and peak RSS; docs/benchmarks.md
("Load and faults (issue 7)") records them.
"""

from __future__ import annotations

import io
import os
import secrets
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pydicom
from pydicom.uid import UID
import pytest
from tests.conftest import require_tool
from tests.dicom_node.corpus import sample
from tests.e2e.harness import Process, wait_for
from tests.faults.rig import NODE_AE, sr_languages_by_study

pytestmark = [pytest.mark.peers, pytest.mark.slow]

ASSOCIATIONS, INSTANCES = (int(v) for v in os.environ.get("MEDREGA_TEST_LOAD", "20x200").lower().split("x"))
RSS_LIMIT_MB = float(os.environ.get("MEDREGA_TEST_LOAD_RSS_MB", "600"))

# Placeholders of fixed length in the template, replaced byte for byte (no length field changes).
_STUDY, _SERIES, _SOP = ("1.2.826.0.1.3680043.8.498.1" + d * 30 for d in "123")
assert len(_STUDY) == 57
_NUMBER, _Z = "864213579", "-9876.54"


_PREFIX = "1.2.826.0.1.3680043.8.498."


def _uid() -> str:
    """A fresh UID exactly as long as the placeholders (57 characters)."""
    return _PREFIX + str(secrets.randbelow(9 * 10**30) + 10**30)


def _template() -> bytes:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.preamble = b"\x00" * 128
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = _STUDY, _SERIES, _SOP
    ds.file_meta.MediaStorageSOPInstanceUID = UID(_SOP)
    ds.InstanceNumber = _NUMBER
    ds.ImagePositionPatient = ["-125.000", "-125.000", _Z]
    ds.Rows = ds.Columns = 64
    ds.PixelData = (np.arange(64 * 64, dtype=np.uint16) % 2000).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    raw = buf.getvalue()
    for placeholder in (_STUDY, _SERIES, _NUMBER, _Z):
        assert raw.count(placeholder.encode()) == 1, placeholder
    assert raw.count(_SOP.encode()) == 2  # file meta and data set
    return raw


def _write_studies(folder: Path) -> list[tuple[str, list[Path]]]:
    template = _template()
    studies = []
    for s in range(ASSOCIATIONS):
        study, series = _uid(), _uid()
        d = folder / f"study{s:02d}"
        d.mkdir(parents=True)
        base = template.replace(_STUDY.encode(), study.encode()).replace(_SERIES.encode(), series.encode())
        files = []
        for i in range(INSTANCES):
            raw = (base.replace(_SOP.encode(), _uid().encode())
                   .replace(_NUMBER.encode(), f"{i + 1:09d}".encode())
                   .replace(_Z.encode(), f"{2.5 * i:08.2f}".encode()))
            path = d / f"{i:04d}.dcm"
            path.write_bytes(raw)
            files.append(path)
        studies.append((study, files))
    return studies


class RssSampler(threading.Thread):
    """Peak resident memory of a process and its children, sampled every 0.2 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                procs = [self.process, *self.process.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            self.stop.wait(0.2)


def test_load_simultaneous_associations_all_stored_and_delivered(make_rig, tmp_path: Path):
    studies = _write_studies(tmp_path / "studies")
    # every sender is on 127.0.0.1 here, where a hospital has one address per modality: the
    # per-address bound on connections still in their handshake must admit all of them at once
    rig = make_rig(sections={"node": {"maximum_associations": ASSOCIATIONS + 8,
                                      "maximum_pending_connections_per_address": ASSOCIATIONS + 8}})
    rig.start_pacs()
    serve = rig.serve()
    sampler = RssSampler(serve.proc.pid)
    sampler.start()
    exe = require_tool("storescu")
    senders = [rig.track(Process([exe, "-aet", f"MOD{n:02d}", "-aec", NODE_AE, "127.0.0.1", str(rig.node_port),
                                  *map(str, files)], tmp_path / f"storescu-{n:02d}.log"))
               for n, (_, files) in enumerate(studies)]
    start = time.monotonic()
    for sender in senders:
        sender.start()
    codes = [sender.proc.wait(timeout=600) for sender in senders]
    sent_s = time.monotonic() - start
    failed = [(n, s.log()[-500:]) for n, (s, c) in enumerate(zip(senders, codes)) if c != 0]
    assert not failed, f"{len(failed)} storescu failed: {failed[:2]}"
    total = ASSOCIATIONS * INSTANCES
    assert rig.instance_count() == total

    wait_for(lambda: rig.all_delivered(ASSOCIATIONS), 120 + 5 * ASSOCIATIONS,
             "every study to be processed and delivered", [serve, rig.pacs])
    done_s = time.monotonic() - start
    sampler.stop.set()
    sampler.join()
    received = sr_languages_by_study(rig.pacs.files())
    assert received == {study: ["en", "zh"] for study, _ in studies}
    peak_mb = sampler.peak / 2**20
    print(f"\nload {ASSOCIATIONS}x{INSTANCES}: {total} instances in {sent_s:.1f} s = {total / sent_s:.0f} inst/s; "
          f"all {ASSOCIATIONS} studies delivered after {done_s:.1f} s; serve peak RSS {peak_mb:.0f} MB")
    assert peak_mb < RSS_LIMIT_MB, f"serve peak RSS {peak_mb:.0f} MB >= {RSS_LIMIT_MB:.0f} MB"
