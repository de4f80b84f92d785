"""Issue 13, the protocol cases (1, 2, 5, 6, 7), reproduced against a running node.

Raw sockets play the slow, broken or hostile peers; legitimate callers are DCMTK ``echoscu``
and pynetdicom. Each test failed on the node before issue 13 (the case number is the issue's).
"""

from __future__ import annotations

import hashlib
import io
import logging
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from sqlalchemy import create_engine, func, select as sql_select

from common.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from common.logs import TextFormatter
from common.models import Instance
from tests.faults.malformed import dataset, fresh_uids, part10, raw_store, valid_elements
from tests.peers.dcmtk import echoscu

from .conftest import NODE_AE, running_node
from .test_upper_layer import (
    _associate_rq,
    _associated,
    _command,
    _dataset_bytes,
    _incoming_empty,
    _instances,
    _pdu,
    _pdv,
    _read_pdu,
)

CT = str(get_testdata_file("CT_small.dcm", download=False))
#: a second loopback address: the hostile peers' (Linux routes all of 127/8 to lo)
HOSTILE = "127.0.0.2"


def _status(body: bytes) -> tuple[int, int]:
    """(Message ID Being Responded To, Status) of a response command set in a P-DATA-TF body."""
    ds = decode(io.BytesIO(body[6:]), True, True)
    return int(ds.MessageIDBeingRespondedTo), int(ds.Status)


def _closed_by_node(sock: socket.socket) -> bool:
    """The node closed (or reset) this connection; reads nothing else."""
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Trickler:
    """Sends one byte a second on each of its connections until the node closes them."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.closed_at: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for n, sock in enumerate(self.socks):
                if n in self.closed_at:
                    continue
                try:
                    sock.send(b"\x00")
                except OSError:
                    self.closed_at.setdefault(n, time.monotonic())

    def poll(self) -> None:
        for n, sock in enumerate(self.socks):
            if n not in self.closed_at and _closed_by_node(sock):
                self.closed_at[n] = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            sock.close()


def _hostile_connection(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOSTILE, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _store_rq(sock: socket.socket, sop_instance: str, message_id: int = 1, sop_class: str = CTImageStorage) -> None:
    sock.sendall(_pdu(0x04, _pdv(1, 0x03, _command(sop_class, 0x0001, message_id, True,
                                                     AffectedSOPInstanceUID=sop_instance))))


# -- case 1: one peer locks out every sender ------------------------------------------------------------
@pytest.mark.parametrize("processes", [1, 2])
def test_c_echo_succeeds_while_128_connections_trickle_an_association_request(settings_factory, processes):
    """128 connections from one address each announce a 1 MiB A-ASSOCIATE-RQ and send a byte a
    second. Beyond node.maximum_pending_connections_per_address they are closed at once (the
    limit holds across listener processes); the others when the association establishment
    deadline (acse_timeout_s, counted from the accept, not from the last byte) passes. A C-ECHO
    from another caller meanwhile succeeds."""
    settings = settings_factory(node={"acse_timeout_s": 3, "maximum_pending_connections_per_address": 8,
                                      "processes": processes})
    with running_node(settings) as node:
        socks = []
        for _ in range(128):
            sock = _hostile_connection(node.port)
            sock.sendall(struct.pack(">BxI", 0x01, 1 << 20) + b"\x00")
            socks.append(sock)
        opened = time.monotonic()
        trickler = _Trickler(socks)
        try:
            echo = echoscu("127.0.0.1", node.port, called_ae=NODE_AE, extra_args=["-to", "10"])
            assert echo.returncode == 0, echo.stdout + echo.stderr
            time.sleep(1.0)
            trickler.poll()
            held = [n for n in range(128) if n not in trickler.closed_at]
            assert len(held) <= 8, f"{len(held)} connections from one address held before association"
            deadline = time.monotonic() + 10
            while len(trickler.closed_at) < 128 and time.monotonic() < deadline:
                time.sleep(0.2)
                trickler.poll()
            assert len(trickler.closed_at) == 128, "trickling connections outlived the establishment deadline"
            assert max(trickler.closed_at.values()) - opened < 3 + 2.5
            echo = echoscu("127.0.0.1", node.port, called_ae=NODE_AE, extra_args=["-to", "10"])
            assert echo.returncode == 0, echo.stdout + echo.stderr
        finally:
            trickler.stop()


def test_c_echo_succeeds_while_maximum_associations_trickle_p_data(settings_factory):
    """node.maximum_associations accepted associations each announce a 1 MiB P-DATA-TF and send
    a byte a second: each PDU gets dimse_timeout_s + its length at minimum_transfer_rate_kb_s
    from its header, then A-ABORT; the association slots come free, and a legitimate C-ECHO
    that found them all taken succeeds within that bound instead of never."""
    settings = settings_factory(node={"maximum_associations": 4, "dimse_timeout_s": 2,
                                      "minimum_transfer_rate_kb_s": 1000, "network_timeout_s": 60})
    with running_node(settings) as node:
        socks = []
        for _ in range(4):
            sock = _hostile_connection(node.port)
            sock.sendall(_associate_rq(calling="TRICKLE"))
            assert _read_pdu(sock)[0] == 0x02
            _store_rq(sock, "1.2.3.4")  # then its data set: a P-DATA-TF announcing 1 MiB
            sock.sendall(struct.pack(">BxI", 0x04, 1 << 20) + struct.pack(">IBB", (1 << 20) - 4, 1, 0x02))
            socks.append(sock)
        sent = time.monotonic()
        trickler = _Trickler(socks)
        try:
            first = echoscu("127.0.0.1", node.port, called_ae=NODE_AE, extra_args=["-to", "10"])
            assert first.returncode != 0, "the four trickling associations should hold every slot at first"
            succeeded = None
            while succeeded is None and time.monotonic() - sent < 15:
                if echoscu("127.0.0.1", node.port, called_ae=NODE_AE, extra_args=["-to", "10"]).returncode == 0:
                    succeeded = time.monotonic() - sent
                else:
                    time.sleep(0.2)
            assert succeeded is not None and succeeded < 2 + 1.05 + 2.5, f"C-ECHO succeeded after {succeeded} s"
            for sock in socks:  # each was told: A-ABORT, source service-user (the node's deadline)
                sock.settimeout(5)
                pdu_type, body = _read_pdu(sock)
                assert (pdu_type, body[2]) == (0x07, 0x00)
        finally:
            trickler.stop()


# -- case 2: the disk floor, enforced while the data set arrives --------------------------------------
def _spool_files(settings) -> list[Path]:
    return [p for p in (Path(settings.data_dir) / "spool").rglob("*") if p.is_file()]


def test_a_4_gb_p_data_under_the_disk_floor_is_refused_at_once(settings_factory):
    """A C-STORE whose P-DATA-TF announces 4 GB while free disk is under
    node.minimum_free_disk_mb: answered 0xA700 before its data set arrives, nothing written."""
    settings = settings_factory(node={"minimum_free_disk_mb": 1e12})
    with running_node(settings) as node:
        sock = _associated(node)
        _store_rq(sock, "1.2.3.4.5")
        length = 0xFFFFFFF0
        sock.sendall(struct.pack(">BxI", 0x04, length) + struct.pack(">IBB", length - 4, 1, 0x02))
        for _ in range(4):
            sock.sendall(b"\x00" * (1 << 20))
        pdu_type, body = _read_pdu(sock)
        assert pdu_type == 0x04 and _status(body) == (1, 0xA700)
        assert _incoming_empty(settings, timeout=0.1), "a file was started in incoming/"
        sock.sendall(_pdu(0x07, b"\x00\x00\x00\x00"))
        sock.close()
        assert _instances(settings) == 0 and _spool_files(settings) == []
        assert echoscu("127.0.0.1", node.port, called_ae=NODE_AE).returncode == 0


def test_a_refused_data_set_leaves_the_association_usable(settings_factory):
    """Under the floor, every request still gets its response on the same association: the
    C-STORE 0xA700 (sent early, the rest of its data set read and dropped), then a C-ECHO 0x0000."""
    settings = settings_factory(node={"minimum_free_disk_mb": 1e12})
    ds = pydicom.dcmread(CT)
    with running_node(settings) as node:
        sock = _associated(node)
        _store_rq(sock, ds.SOPInstanceUID, message_id=5)
        data = _dataset_bytes(ds)
        for n in range(0, len(data), 4096):
            sock.sendall(_pdu(0x04, _pdv(1, 0x02 if n + 4096 >= len(data) else 0x00, data[n:n + 4096])))
        assert _status(_read_pdu(sock)[1]) == (5, 0xA700)
        sock.sendall(_pdu(0x04, _pdv(3, 0x03, _command(Verification, 0x0030, 6, False))))
        assert _status(_read_pdu(sock)[1]) == (6, 0x0000)
        sock.sendall(_pdu(0x05, b"\x00\x00\x00\x00"))
        assert _read_pdu(sock)[0] == 0x06
        sock.close()
        assert _incoming_empty(settings) and _instances(settings) == 0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs (needs root, as the tests run in CI and on the development machines)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _ct_of(megabytes: int) -> pydicom.Dataset:
    import numpy as np

    ds = pydicom.dcmread(CT)
    side = int((megabytes * (1 << 20) // 2) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.PixelData = np.zeros((side, side), dtype=np.int16).tobytes()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    return ds


@pytest.mark.parametrize("floor_mb", [0, 3], ids=["ENOSPC", "floor crossed while writing"])
def test_a_full_disk_mid_write_gets_a700_not_a_reset(settings_factory, sqlite_url, small_disk, floor_mb):
    """The data set no longer fits while it is written (a real ENOSPC on a small tmpfs, or the
    floor crossed after the first megabytes): 0xA700, the partial file removed, and the
    association goes on (pynetdicom as the SCU)."""
    from tests.dicom_node.conftest import make_settings

    settings = make_settings(small_disk, sqlite_url, node={"minimum_free_disk_mb": floor_mb})
    with running_node(settings) as node:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        try:
            assert assoc.is_established
            assert assoc.send_c_store(_ct_of(8)).Status == 0xA700
            assert _incoming_empty(settings, timeout=0.1)
            small = pydicom.dcmread(CT)
            assert assoc.send_c_store(small).Status == 0x0000
        finally:
            assoc.release()
    assert _instances(settings) == 1


# -- case 5: UIDs and mandatory command elements ------------------------------------------------------
def test_a_data_set_uid_ending_in_line_feed_nul_line_feed_is_refused(node, settings, tmp_path):
    study, series, sop = fresh_uids()
    elements = valid_elements(study, series, sop)
    elements[0x0020000D] = (b"UI", b"1.2.3\n\x00\n")
    outcome = raw_store(node.port, part10(tmp_path / "lf.dcm", dataset(elements), sop_instance=sop), called_ae=NODE_AE)
    assert outcome.status == 0xC001
    assert _instances(settings) == 0 and _spool_files(settings) == []


def _store_and_status(sock: socket.socket, command: bytes, message_id: int, data: bytes | None = None) -> int:
    sock.sendall(_pdu(0x04, _pdv(1, 0x03, command)))
    if data is not None:
        sock.sendall(_pdu(0x04, _pdv(1, 0x02, data)))
    pdu_type, body = _read_pdu(sock)
    assert pdu_type == 0x04, f"a response expected, got PDU type 0x{pdu_type:02X}"
    responded_to, status = _status(body)
    assert responded_to == message_id
    return status


def _with_raw_uid(command: bytes, element: int, raw: bytes) -> bytes:
    """A command set whose (0000,eeee) UI value is replaced by ``raw`` (group length fixed)."""
    out, pos = b"", 0
    while pos < len(command):
        group, elem, length = struct.unpack_from("<HHI", command, pos)
        value = command[pos + 8:pos + 8 + length]
        if elem == element:
            value = raw
        out += struct.pack("<HHI", group, elem, len(value)) + value
        pos += 8 + length
    return out[:8] + struct.pack("<I", len(out) - 12) + out[12:]


def test_command_uids_are_checked_with_the_strict_validator(node, settings, caplog):
    """A C-STORE-RQ without Affected SOP Instance UID: 0x0117, nothing stored (was: stored with an
    empty (0002,0003)); a non-ASCII byte in either command UID: 0x0117 / 0x0122 (was: a
    traceback and A-ABORT reason 0); the association answers each and goes on."""
    ds = pydicom.dcmread(CT)
    data = _dataset_bytes(ds)
    sock = _associated(node)
    without = _command(CTImageStorage, 0x0001, 1, True)
    assert _store_and_status(sock, without, 1, data) == 0x0117
    instance = _command(CTImageStorage, 0x0001, 2, True, AffectedSOPInstanceUID=ds.SOPInstanceUID)
    assert _store_and_status(sock, _with_raw_uid(instance, 0x1000, b"1.2.\xe9"), 2, data) == 0x0117
    assert _store_and_status(sock, _with_raw_uid(instance, 0x0002, b"1.2.840.10008.5.1.4.1.1.\xb2"), 2, data) == 0x0122
    assert _store_and_status(sock, _with_raw_uid(instance, 0x1000, b"1.2.3\n\x00\n"), 2, data) == 0x0117
    no_data_set = _command(CTImageStorage, 0x0001, 9, False, AffectedSOPInstanceUID=ds.SOPInstanceUID)
    assert _store_and_status(sock, no_data_set, 9) == 0xC000  # was: answered 0x0000, nothing stored
    echo_with_data = _command(Verification, 0x0030, 10, True)
    sock.sendall(_pdu(0x04, _pdv(3, 0x03, echo_with_data) + _pdv(3, 0x02, b"\x08\x00\x16\x00UI\x00\x00")))
    assert _status(_read_pdu(sock)[1]) == (10, 0x0212)
    assert _store_and_status(sock, instance, 2, data) == 0x0000  # the same association goes on
    sock.sendall(_pdu(0x05, b"\x00\x00\x00\x00"))
    assert _read_pdu(sock)[0] == 0x06
    sock.close()
    assert _instances(settings) == 1
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_a_line_feed_in_a_command_uid_cannot_forge_a_log_line(node, settings):
    """The text log escapes control characters of every value (common.logs.TextFormatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logging.getLogger().addHandler(handler)
    try:
        sock = _associated(node)
        forged = b"1.2.3\n2026-12-07 00:00:00 INFO gateway: FORGED"
        command = _with_raw_uid(_command(CTImageStorage, 0x0001, 3, True, AffectedSOPInstanceUID="1.2.3"),
                                0x1000, forged + b"\x00" * (len(forged) % 2))
        assert _store_and_status(sock, command, 3, b"\x08\x00\x16\x00UI\x00\x00") == 0x0117
        sock.close()
        time.sleep(0.2)
    finally:
        logging.getLogger().removeHandler(handler)
    text = stream.getvalue()
    assert "FORGED" in text, "the refusal is logged with the value"
    assert not [line for line in text.splitlines() if line.startswith("2026-12-07 00:00:00")]
    assert "1.2.3\\n2026" in text


# -- case 6: the Affected SOP Class UID against the presentation context ----------------------------------
def test_a_private_sop_class_on_the_verification_context_is_refused_with_0122(node, settings):
    """Was stored with 0x0000 (against conformance statement 4.2.1.1), then killed its job."""
    ds = pydicom.dcmread(CT)
    ds.SOPClassUID = "1.2.826.0.1.3680043.99.1"
    sock = _associated(node)
    command = _command("1.2.826.0.1.3680043.99.1", 0x0001, 4, True, AffectedSOPInstanceUID=ds.SOPInstanceUID)
    sock.sendall(_pdu(0x04, _pdv(3, 0x03, command)))  # context 3: Verification
    sock.sendall(_pdu(0x04, _pdv(3, 0x02, _dataset_bytes(ds))))
    assert _status(_read_pdu(sock)[1]) == (4, 0x0122)
    sock.close()
    assert _incoming_empty(settings) and _instances(settings) == 0


def test_a_data_set_of_another_sop_class_than_its_context_is_refused_with_a900(node, settings):
    """The command matches its context (CT), the data set says MR: 0xA900 (PS3.4 B.2.3)."""
    ds = pydicom.dcmread(CT)
    ds.SOPClassUID = MRImageStorage
    sock = _associated(node)
    command = _command(CTImageStorage, 0x0001, 8, True, AffectedSOPInstanceUID=ds.SOPInstanceUID)
    assert _store_and_status(sock, command, 8, _dataset_bytes(ds)) == 0xA900
    sock.close()
    assert _instances(settings) == 0


# -- case 7: the node's own identity, and duplicates by the data set alone -----------------------------
def test_the_node_announces_its_own_implementation(node):
    echo = echoscu("127.0.0.1", node.port, called_ae=NODE_AE, extra_args=["-d"])
    assert echo.returncode == 0
    out = echo.stdout + echo.stderr
    assert f"Their Implementation Class UID:    {IMPLEMENTATION_CLASS_UID}" in out
    assert f"Their Implementation Version Name: {IMPLEMENTATION_VERSION_NAME}" in out
    assert "PYNETDICOM" not in out


def test_stored_file_names_the_node_and_its_hash_covers_the_data_set_alone(node, settings):
    ds = pydicom.dcmread(CT)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sql_select(Instance.path, Instance.sha256, Instance.duplicate_count)).one()
    finally:
        engine.dispose()
    stored = pydicom.dcmread(Path(settings.data_dir) / row.path)
    assert stored.file_meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
    assert stored.file_meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
    assert row.sha256 == hashlib.sha256(_dataset_bytes(ds)).hexdigest(), "the hash of the data set as sent"
    assert row.duplicate_count == 1


def test_a_row_hashed_with_its_file_meta_still_recognises_an_identical_resend(node, settings):
    """A row filed before issue 13 holds the SHA-256 of the whole file, pynetdicom's File Meta
    included: the identical re-send is still a duplicate (not a replacement), and the row's hash
    becomes the data set's."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
    from sqlalchemy import update

    from common.models import InstanceReplacement

    ds = pydicom.dcmread(CT)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])

    def send() -> int:
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        try:
            return int(assoc.send_c_store(ds).Status)
        finally:
            assoc.release()

    assert send() == 0x0000
    engine = create_engine(settings.database_url)
    try:
        with engine.begin() as conn:  # what the node before issue 13 left: its File Meta, its hash
            path = Path(settings.data_dir) / conn.execute(sql_select(Instance.path)).scalar_one()
            old = pydicom.dcmread(path)
            old.file_meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
            old.file_meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
            old.save_as(path, enforce_file_format=True)
            old_hash = hashlib.sha256(path.read_bytes()).hexdigest()
            conn.execute(update(Instance).values(sha256=old_hash, size_bytes=path.stat().st_size))
        assert send() == 0x0000
        with engine.connect() as conn:
            row = conn.execute(sql_select(Instance.sha256, Instance.duplicate_count)).one()
            replacements = conn.execute(sql_select(func.count()).select_from(InstanceReplacement)).scalar_one()
    finally:
        engine.dispose()
    assert row.duplicate_count == 1 and replacements == 0
    assert row.sha256 == hashlib.sha256(_dataset_bytes(ds)).hexdigest()
