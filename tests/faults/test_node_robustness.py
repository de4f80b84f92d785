"""Node robustness found by the fault tests (issue 7): each was answered Success or locked callers out.

1. Malformed data sets must be refused, not filed: a UID attribute encoded with a wrong VR that
   pydicom decodes to a "valid" UID, elements whose length runs past the end of the data set (in
   the header the node parses, or in the pixel data it does not decode).
2. A connection the peer has already closed (a port scanner, a load balancer's probe) must not
   hold a ``node.maximum_associations`` slot until ``acse_timeout_s`` expires.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.faults.malformed import dataset, echo_ok, element, fresh_uids, part10, raw_store, valid_elements
from tests.faults.rig import NODE_AE
from tests.faults.test_malformed import _ct_small, _stored

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def _uid_with_vr_us(folder: Path) -> tuple[Path, str]:
    study, series, sop = fresh_uids()
    elements = valid_elements(study, series, sop)
    elements[0x0020000D] = (b"US", b"\x01\x00")  # pydicom decodes 1 -> "1", a syntactically valid UID
    return part10(folder / "vr-us.dcm", dataset(elements), sop_instance=sop), sop


def _past_the_end(tag: int, vr: bytes, value: bytes, length: int, name: str):
    def build(folder: Path) -> tuple[Path, str]:
        study, series, sop = fresh_uids()
        head = {t: v for t, v in valid_elements(study, series, sop).items() if t >> 16 < 0x0028}
        body = dataset(head) + element(tag, vr, value, length)  # the data set ends inside this element
        return part10(folder / f"{name}.dcm", body, sop_instance=sop), sop
    return build


def _truncated_pixel_data(folder: Path) -> tuple[Path, str]:
    raw, uid, _ = _ct_small(folder)
    path = folder / "truncated-pixels.dcm"
    path.write_bytes(raw[:int(len(raw) * 0.7)])  # PixelData declares 32768 bytes, ~20000 follow
    return path, uid


CASES = {
    "StudyInstanceUID encoded with VR US (filed under study '1')": _uid_with_vr_us,
    "Rows (0028,0010) whose length runs 20000 bytes past the end": _past_the_end(
        0x00280010, b"US", b"\x08\x00", 20000, "rows-past-end"),
    "element (0018,9999) OB declaring 4 GiB - 16 bytes": _past_the_end(
        0x00189999, b"OB", b"\x00" * 16, 0xFFFFFFF0, "huge-length"),
    "CT_small cut inside its pixel data": _truncated_pixel_data,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_data_set_is_refused_not_filed(case, make_rig, tmp_path: Path):
    rig = make_rig(with_pacs=False, sections={"node": {"stable_after_s": 3600}})
    rig.serve()
    path, uid = CASES[case](tmp_path)
    outcome = raw_store(rig.node_port, path, called_ae=NODE_AE)
    assert outcome.status is not None and outcome.refused, f"{case}: answered 0x{outcome.status:04X}"
    assert uid not in _stored(rig), f"{case}: filed"


def test_a_connection_closed_by_the_peer_frees_its_association_slot(make_rig):
    rig = make_rig(with_pacs=False, sections={"node": {"stable_after_s": 3600, "maximum_associations": 1,
                                                       "acse_timeout_s": 30}})
    rig.serve()
    deadline = time.monotonic() + 40  # the harness's own port check also connected and closed
    while not echo_ok(rig.node_port, NODE_AE):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    socket.create_connection(("127.0.0.1", rig.node_port)).close()  # a TCP probe: connect, close
    start = time.monotonic()
    while not echo_ok(rig.node_port, NODE_AE):
        time.sleep(0.1)
        assert time.monotonic() - start < 3, "the closed connection still holds the only association slot"
