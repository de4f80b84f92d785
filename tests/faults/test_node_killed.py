"""Issue 7, fault 4: ``kill -9`` of the node (``serve``) in the middle of an association.

A 200 MiB multi-frame CT streams from ``storescu`` (4 KiB PDUs, so it takes a couple of seconds)
and ``serve`` is killed while the data set is half received. The partial data may only ever be in
``data_dir/incoming`` (never in the spool, never as a row), the sender sees a failure, and after
a restart (which clears ``incoming``) the resent instance is stored whole and the study processed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from common.db import session_scope
from common.models import Instance
from tests.conftest import require_tool
from tests.e2e.harness import Process, wait_for
from tests.faults.rig import NODE_AE, large_multiframe, sr_languages_by_study

pytestmark = [pytest.mark.peers, pytest.mark.slow]

FRAMES = 100  # x 1024 x 1024 x 2 bytes = 200 MiB


def _instance_rows(url: str, uid: str) -> list[Instance]:
    with session_scope(url) as s:
        return list(s.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).all())


def _receiving(incoming: Path) -> int:
    """Bytes received so far of the reception in progress (0 when none)."""
    try:
        return max((e.stat().st_size for e in os.scandir(incoming) if e.name.startswith("rx-")), default=0)
    except FileNotFoundError:  # a reception finished between listing and stat
        return 0


def test_node_killed_mid_association_leaves_nothing_partial_and_resend_succeeds(make_rig, tmp_path: Path):
    rig = make_rig()
    big = large_multiframe(tmp_path / "big.dcm", FRAMES)
    size = big.stat().st_size
    uid = str(pydicom.dcmread(big, stop_before_pixels=True).SOPInstanceUID)
    study_uid = str(pydicom.dcmread(big, stop_before_pixels=True).StudyInstanceUID)
    rig.start_pacs()
    serve = rig.serve()
    incoming = rig.data_dir / "incoming"
    sender = rig.track(Process([require_tool("storescu"), "-aet", "MODALITY", "-aec", NODE_AE, "--max-send-pdu", "4096",
                                "127.0.0.1", str(rig.node_port), str(big)], tmp_path / "storescu-killed.log")).start()

    deadline = time.monotonic() + 60
    received = 0
    while received < size // 4:
        assert time.monotonic() < deadline, f"the node received {received} of {size} bytes in 60 s"
        assert sender.alive(), f"storescu ended before the node was killed:\n{sender.log()}"
        assert not rig.spool_files(), "an instance appeared in the spool while it was still being received"
        received = _receiving(incoming)
        time.sleep(0.005)
    serve.stop(signal.SIGKILL)
    partial = _receiving(incoming)
    assert 0 < partial < size, f"not killed mid-way: {partial} of {size} bytes in incoming"

    assert sender.proc.wait(timeout=60) != 0, f"storescu reported success:\n{sender.log()}"
    assert rig.spool_files() == [], "a partial instance is in the spool"
    assert _instance_rows(rig.db_url, uid) == [], "a partial instance was recorded"
    outside = [p for p in rig.data_dir.rglob("*") if p.is_file() and incoming not in p.parents
               and p.stat().st_size > 8 << 20 and not p.name.startswith(("gateway.db", "broker.db"))]
    assert outside == [], f"received data outside data_dir/incoming: {outside}"

    serve = rig.serve("serve-restarted.log")
    assert [p.name for p in incoming.iterdir()] == [], "the restart did not clear the partial reception"
    rig.send([big], timeout=300)
    (row,) = _instance_rows(rig.db_url, uid)
    assert row.number_of_frames == FRAMES and (row.rows, row.columns) == (1024, 1024)
    stored = rig.data_dir / row.path
    assert stored.stat().st_size == row.size_bytes >= size - 1024, "the stored instance is not whole"
    wait_for(lambda: rig.all_delivered(1), 120, "the resent study to be processed and delivered",
             [serve, rig.pacs])
    assert sr_languages_by_study(rig.pacs.files()) == {study_uid: ["en", "zh"]}
