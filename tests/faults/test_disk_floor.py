"""Issue 7, fault 5: free disk under ``node.minimum_free_disk_mb``.

``tests/dicom_node/test_receive.py`` already checks, on an in-process node, that such a C-STORE is
refused with 0xA700 and leaves no row and no spool file. Here, on a running ``serve``: a whole
study is refused instance by instance while the node keeps answering (C-ECHO, further
associations), nothing is left half-written anywhere under data_dir, no study or job appears; once
the floor is lowered (config change, restart) the same study is accepted, processed and delivered.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from common.db import session_scope
from common.models import Instance, Job, QuarantinedInstance, Study
from tests.dicom_node.corpus import write_series
from tests.e2e.harness import wait_for
from tests.faults.rig import NODE_AE, sr_languages_by_study
from tests.peers.dcmtk import echoscu

pytestmark = [pytest.mark.peers, pytest.mark.slow]

FILES = 4


def _count(url: str, model) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_disk_under_the_floor_refuses_cleanly_and_accepts_once_lowered(make_rig, tmp_path: Path):
    rig = make_rig(sections={"node": {"minimum_free_disk_mb": 1e12}})  # an exabyte: never free
    rig.start_pacs()
    serve = rig.serve()
    files = write_series(tmp_path / "study", FILES)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    def statuses(result) -> list[str]:
        return [line.split(":", 2)[2].strip()[:6] for line in (result.stdout + result.stderr).lower().splitlines()
                if "dimse status" in line]

    halted = rig.send(files, check=False, extra_args=["-d"])  # storescu stops at the first refusal
    assert halted.returncode != 0, "storescu reported success below the disk floor"
    assert statuses(halted) == ["0xa700"], halted.stdout[-3000:]
    assert echoscu("127.0.0.1", rig.node_port, called_ae=NODE_AE).returncode == 0, "no C-ECHO after a refusal"
    # a new association, every instance offered: each one is answered 0xA700 and the node goes on
    every = rig.send(files, check=False, extra_args=["-d", "--no-halt"])
    assert statuses(every) == ["0xa700"] * FILES, every.stdout[-3000:]
    echo = echoscu("127.0.0.1", rig.node_port, called_ae=NODE_AE)
    assert echo.returncode == 0, f"C-ECHO failed after refusals: {echo.stdout}{echo.stderr}"
    assert serve.alive()

    assert [_count(rig.db_url, m) for m in (Instance, Study, Job, QuarantinedInstance)] == [0, 0, 0, 0]
    leftovers = [p.relative_to(rig.data_dir) for p in rig.data_dir.rglob("*")
                 if p.is_file() and not p.name.startswith(("gateway.db", "broker.db"))]
    assert leftovers == [], f"half-written files under data_dir after refusals: {leftovers}"

    serve.stop()
    rig.reconfigure(node={"minimum_free_disk_mb": 1})
    serve = rig.serve("serve-floor-lowered.log")
    rig.send(files)
    assert _count(rig.db_url, Instance) == FILES
    assert len(rig.spool_files()) == FILES
    wait_for(lambda: rig.all_delivered(1), 60, "the accepted study to be processed and delivered",
             [serve, rig.pacs])
    assert sr_languages_by_study(rig.pacs.files()) == {study_uid: ["en", "zh"]}
