"""The node's own Upper Layer acceptor (PS3.8) and DIMSE command coding (PS3.7), driven over a
real socket: what a broken or hostile peer sends must end its association with A-ABORT, leave
nothing behind, and never stop the node."""

from __future__ import annotations

import socket
import struct
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelFind, Verification
from sqlalchemy import create_engine, func, select

from common.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.dimse import Command, decode_command, encode_response
from dicom_node.upper_layer import _file_meta
from common.models import Instance

from .conftest import NODE_AE
from .test_scp import echoscu

CT = get_testdata_file("CT_small.dcm", download=False)


def _command(sop_class: str, command_field: int, message_id: int, data_set: bool, **extra) -> bytes:
    """An encoded request command set (Implicit VR Little Endian, PS3.7 6.3.1), by pydicom."""
    cs = Dataset()
    cs.CommandGroupLength = 0
    cs.AffectedSOPClassUID = sop_class
    cs.CommandField = command_field
    cs.MessageID = message_id
    cs.Priority = extra.pop("Priority", 0)
    cs.CommandDataSetType = 0x0000 if data_set else 0x0101
    for keyword, value in extra.items():
        setattr(cs, keyword, value)
    encoded = encode(cs, True, True)
    assert encoded is not None, "pynetdicom could not encode the command set"
    return encoded


# -- command sets and file meta against pydicom's codec -------------------------------------------
def test_command_set_decoding_matches_pydicom():
    command = decode_command(_command(
        CTImageStorage, 0x0001, 513, True, Priority=2,
        AffectedSOPInstanceUID="1.2.3.45",  # odd length: NUL padded
        MoveOriginatorApplicationEntityTitle="MOVER", MoveOriginatorMessageID=9,
    ))
    assert command == Command(
        command_field=1, message_id=513, has_data_set=True, affected_sop_class_uid=CTImageStorage,
        affected_sop_instance_uid="1.2.3.45", priority=2, move_originator_ae_title="MOVER",
        move_originator_message_id=9,
    )


def test_response_encoding_is_what_pydicom_decodes():
    request = Command(1, 77, True, CTImageStorage, "1.2.3.45")
    rsp = decode(BytesIO(encode_response(request, 0xA700)), True, True)
    assert rsp.CommandField == 0x8001
    assert rsp.MessageIDBeingRespondedTo == 77
    assert rsp.Status == 0xA700
    assert rsp.CommandDataSetType == 0x0101
    assert rsp.AffectedSOPClassUID == CTImageStorage
    assert rsp.AffectedSOPInstanceUID == "1.2.3.45"
    # Command Group Length counts the bytes after it (PS3.7 6.3.1)
    raw = encode_response(request, 0)
    assert struct.unpack_from("<I", raw, 8)[0] == len(raw) - 12


@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "1.2.840.113619.2.55.3.604688119.969.1268071029.320"])
@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
def test_file_meta_is_byte_identical_to_pydicom(sop_instance, transfer_syntax):
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, create_file_meta(
        sop_class_uid=UID(CTImageStorage), sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(transfer_syntax), implementation_uid=UID(IMPLEMENTATION_CLASS_UID),
        implementation_version=IMPLEMENTATION_VERSION_NAME,
    ))
    assert _file_meta(Command(1, 1, True, CTImageStorage, sop_instance), transfer_syntax) == buffer.getvalue()


def test_truncated_command_set_is_refused():
    with pytest.raises(ValueError):
        decode_command(b"\x00\x00\x00\x01\x02\x00\x00\x00\x01")
    with pytest.raises(ValueError):
        decode_command(struct.pack("<HHI", 0, 0x0100, 50) + b"\x01\x00")


# -- a raw peer ------------------------------------------------------------------------------------
def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BxI", pdu_type, len(body)) + body


def _pdv(context_id: int, control: int, data: bytes) -> bytes:
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def _associate_rq(abstract_syntaxes=(CTImageStorage, Verification), called=NODE_AE, calling="RAWPEER") -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    contexts = []
    for n, abstract in enumerate(abstract_syntaxes):
        cx = build_context(abstract, [ExplicitVRLittleEndian])
        cx.context_id = 1 + 2 * n
        contexts.append(cx)
    primitive.presentation_context_definition_list = contexts
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.3.4"
    primitive.user_information = [max_length, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    head = _recv_exact(sock, 6)
    pdu_type, length = struct.unpack(">BxI", head)
    return pdu_type, _recv_exact(sock, length)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _connect(node) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    return sock


def _associated(node, **kw) -> socket.socket:
    sock = _connect(node)
    sock.sendall(_associate_rq(**kw))
    pdu_type, _ = _read_pdu(sock)
    assert pdu_type == 0x02, "A-ASSOCIATE-AC expected"
    return sock


def _expect_abort(sock: socket.socket) -> bytes:
    """Read the node's A-ABORT, then close the connection as the requestor does (AA-3); the node
    waits for that close (Sta13, PS3.8 9.2) and sends nothing more."""
    pdu_type, body = _read_pdu(sock)
    assert pdu_type == 0x07, f"A-ABORT expected, got PDU type 0x{pdu_type:02X}"
    sock.close()
    return body


def _store_command(sop_instance: str, message_id: int = 1) -> bytes:
    return _command(CTImageStorage, 0x0001, message_id, True, AffectedSOPInstanceUID=sop_instance)


def _dataset_bytes(ds: Dataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(buffer, ds)
    return buffer.getvalue()


def _node_still_answers(node) -> None:
    proc = echoscu("127.0.0.1", node.port, called_ae=NODE_AE)
    assert proc.returncode == 0, proc.stderr


def _instances(settings) -> int:
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(Instance)).scalar_one())
    finally:
        engine.dispose()


def _incoming_empty(settings, timeout: float = 5.0) -> bool:
    incoming = Path(settings.data_dir) / "incoming"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [p for p in incoming.glob("rx-*")]:
            return True
        time.sleep(0.05)
    return False


# -- protocol errors end the association, not the node ----------------------------------------------
def test_data_before_association_is_aborted(node):
    sock = _connect(node)
    sock.sendall(_pdu(0x04, _pdv(1, 0x03, b"\x00" * 8)))
    body = _expect_abort(sock)
    assert body[2:4] == bytes((0x02, 0x02))  # source: service provider, reason: unexpected PDU
    _node_still_answers(node)


def test_unknown_pdu_type_is_aborted_as_unrecognized(node):
    sock = _associated(node)
    sock.sendall(_pdu(0x09, b"\x00\x00\x00\x00"))
    body = _expect_abort(sock)
    assert body[2:4] == bytes((0x02, 0x01))  # unrecognized PDU
    _node_still_answers(node)


def test_pdv_on_a_context_that_was_not_accepted_is_aborted(node):
    sock = _associated(node)
    sock.sendall(_pdu(0x04, _pdv(99, 0x03, _store_command("1.2.3"))))
    body = _expect_abort(sock)
    assert body[2:4] == bytes((0x02, 0x06))  # invalid PDU parameter value
    _node_still_answers(node)


def test_oversized_association_request_is_aborted(node):
    sock = _connect(node)
    sock.sendall(struct.pack(">BxI", 0x01, 64 << 20))
    _expect_abort(sock)
    _node_still_answers(node)


def test_garbage_command_set_is_aborted(node):
    sock = _associated(node)
    sock.sendall(_pdu(0x04, _pdv(1, 0x03, b"\x08\x00\x16\x00" + b"\xff" * 20)))
    _expect_abort(sock)
    _node_still_answers(node)


@pytest.mark.parametrize("how", ["peer A-ABORT", "connection closed"])
def test_a_data_set_cut_off_in_the_middle_leaves_nothing(node, settings, how):
    ds = pydicom.dcmread(CT)
    data = _dataset_bytes(ds)
    sock = _associated(node)
    sock.sendall(_pdu(0x04, _pdv(1, 0x03, _store_command(ds.SOPInstanceUID))))
    sock.sendall(_pdu(0x04, _pdv(1, 0x00, data[: len(data) // 2])))  # not the last fragment
    if how == "peer A-ABORT":
        sock.sendall(_pdu(0x07, b"\x00\x00\x00\x00"))
        assert sock.recv(1) == b"", "no response to an aborted C-STORE"
    sock.close()
    assert _incoming_empty(settings), "the partial reception is removed"
    assert _instances(settings) == 0
    _node_still_answers(node)


def test_store_in_many_small_fragments_then_release(node, settings):
    """Command and data set split over several PDVs and PDUs (PS3.8 Annex E), then A-RELEASE."""
    ds = pydicom.dcmread(CT)
    data = _dataset_bytes(ds)
    command = _store_command(ds.SOPInstanceUID, message_id=42)
    sock = _associated(node)
    sock.sendall(_pdu(0x04, _pdv(1, 0x01, command[:30]) + _pdv(1, 0x03, command[30:])))
    pieces = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    for n, piece in enumerate(pieces):
        sock.sendall(_pdu(0x04, _pdv(1, 0x02 if n == len(pieces) - 1 else 0x00, piece)))
    pdu_type, body = _read_pdu(sock)
    assert pdu_type == 0x04
    length, context_id, control = struct.unpack_from(">IBB", body)
    assert (context_id, control) == (1, 0x03)
    rsp = decode(BytesIO(body[6:6 + length - 2]), True, True)
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (0x8001, 42, 0x0000)
    sock.sendall(_pdu(0x05, b"\x00\x00\x00\x00"))
    pdu_type, _ = _read_pdu(sock)
    assert pdu_type == 0x06  # A-RELEASE-RP
    sock.close()  # the requestor closes (AR-3)
    assert _instances(settings) == 1


@pytest.mark.parametrize("timeout", ["network_timeout_s", "acse_timeout_s"])
def test_timeouts_end_idle_connections(settings_factory, timeout):
    """network_timeout_s: an idle association is aborted (A-ABORT); acse_timeout_s: a
    connection that never sends an A-ASSOCIATE-RQ is closed (ARTIM, PS3.8 9.1.5)."""
    from dicom_node.scp import StorageSCP

    scp = StorageSCP(settings_factory(node={timeout: 1}))
    scp.start()
    try:
        started = time.monotonic()
        if timeout == "network_timeout_s":
            _expect_abort(_associated(scp))
        else:
            assert _connect(scp).recv(1) == b""
        assert 0.5 < time.monotonic() - started < 8
        _node_still_answers(scp)
    finally:
        scp.stop()


# -- what pynetdicom as a peer sees ----------------------------------------------------------------------
def test_pynetdicom_scu_with_a_small_pdu_stores_and_query_contexts_are_rejected(node, settings):
    ae = AE(ae_title="PYSCU")
    ae.maximum_pdu_size = 4096  # the node sends nothing bigger than our limit
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        assert assoc.is_established
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert accepted == {CTImageStorage}, "only storage and verification are offered"
        ds = pydicom.dcmread(CT)
        status = assoc.send_c_store(ds)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    assert _instances(settings) == 1


def test_an_operation_other_than_store_or_echo_is_refused_with_0211(node, settings):
    """A C-FIND-RQ sent on a storage context: its identifier is read and dropped, and the
    response says unrecognized operation (PS3.7 C.4.2); the association goes on."""
    identifier = Dataset()
    identifier.PatientID = "*"
    sock = _associated(node)
    sock.sendall(_pdu(0x04, _pdv(1, 0x03, _command(CTImageStorage, 0x0020, 5, True))))
    sock.sendall(_pdu(0x04, _pdv(1, 0x02, _dataset_bytes(identifier))))
    pdu_type, body = _read_pdu(sock)
    assert pdu_type == 0x04
    rsp = decode(BytesIO(body[6:]), True, True)
    assert (rsp.CommandField, rsp.MessageIDBeingRespondedTo, rsp.Status) == (0x8020, 5, 0x0211)
    # then a C-ECHO on the same association still works
    sock.sendall(_pdu(0x04, _pdv(3, 0x03, _command(Verification, 0x0030, 6, False))))
    pdu_type, body = _read_pdu(sock)
    rsp = decode(BytesIO(body[6:]), True, True)
    assert (rsp.CommandField, rsp.Status) == (0x8030, 0x0000)
    assert _instances(settings) == 0


def test_mismatch_found_in_the_head_of_a_large_data_set_is_refused_with_c002(node, settings):
    """The header of a data set over 64 KiB is parsed while its pixel data are in transit;
    a data set whose SOP Instance UID differs from the command's is still refused (0xC002,
    PS3.4 B.2.3) and quarantined, and the next instance on the association is filed."""
    import numpy as np
    from common.models import QuarantinedInstance

    ds = pydicom.dcmread(CT)
    ds.Rows, ds.Columns = 256, 256
    ds.PixelData = np.arange(256 * 256, dtype=np.int16).tobytes()
    data = _dataset_bytes(ds)
    assert len(data) > 64 * 1024
    sock = _associated(node)

    def store(command_uid: str, message_id: int) -> int:
        sock.sendall(_pdu(0x04, _pdv(1, 0x03, _store_command(command_uid, message_id))))
        pieces = [data[i:i + 16000] for i in range(0, len(data), 16000)]
        for n, piece in enumerate(pieces):
            sock.sendall(_pdu(0x04, _pdv(1, 0x02 if n == len(pieces) - 1 else 0x00, piece)))
        pdu_type, body = _read_pdu(sock)
        assert pdu_type == 0x04
        rsp = decode(BytesIO(body[6:]), True, True)
        assert rsp.MessageIDBeingRespondedTo == message_id
        return int(rsp.Status)

    assert store("1.2.3.4.5.6", 1) == 0xC002
    assert store(ds.SOPInstanceUID, 2) == 0x0000
    sock.sendall(_pdu(0x05, b"\x00\x00\x00\x00"))
    assert _read_pdu(sock)[0] == 0x06
    assert _instances(settings) == 1
    engine = create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            quarantined = conn.execute(select(func.count()).select_from(QuarantinedInstance)).scalar_one()
    finally:
        engine.dispose()
    assert quarantined == 1


# -- property: whatever PDUs follow a valid association, the node ends it cleanly ---------------------
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st  # noqa: E402

_PDV = st.builds(
    lambda cx, control, data: _pdv(cx, control, data),
    st.sampled_from([1, 3, 5, 99]),  # accepted CT / Verification contexts, an unproposed one
    st.integers(0, 3),  # command/data x last/not last
    st.one_of(st.binary(max_size=64), st.just(_store_command("1.2.3.4"))),
)
_PDU = st.one_of(
    st.builds(lambda pdvs: _pdu(0x04, b"".join(pdvs)), st.lists(_PDV, min_size=1, max_size=3)),
    st.builds(lambda t, body: _pdu(t, body), st.integers(0, 12), st.binary(max_size=16)),
    st.builds(lambda body, cut: _pdu(0x04, body)[:cut], st.binary(min_size=6, max_size=40), st.integers(1, 12)),
)


@hypothesis_settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pdus=st.lists(_PDU, min_size=1, max_size=5), close_early=st.booleans())
def test_random_pdus_after_association_never_leave_files_or_stop_the_node(node, settings, pdus, close_early):
    sock = _associated(node)
    try:
        for pdu in pdus:
            sock.sendall(pdu)
        if not close_early:
            sock.sendall(_pdu(0x05, b"\x00\x00\x00\x00"))  # then a release request
            sock.settimeout(10)
            try:
                while _read_pdu(sock)[0] not in (0x06, 0x07):  # responses, until A-RELEASE-RP or A-ABORT
                    pass
            except (ConnectionError, TimeoutError, socket.timeout):
                pass
    except (BrokenPipeError, ConnectionResetError):
        pass  # the node aborted and closed first
    finally:
        sock.close()
    assert _incoming_empty(settings), "a partial reception was left in incoming/"
    assert _instances(settings) == 0  # nothing here is a complete, valid data set
    _node_still_answers(node)


def test_a_reception_file_that_cannot_be_created_is_refused_with_a700(node, settings, monkeypatch):
    """Out of inodes or an unwritable incoming/: the data set is read and dropped, the C-STORE
    refused as out of resources (PS3.4 B.2.3), and the association goes on."""
    import errno

    import dicom_node.upper_layer as upper_layer

    def no_space(directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upper_layer, "_mkstemp", no_space)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        assert assoc.is_established
        ds = pydicom.dcmread(CT)
        assert assoc.send_c_store(ds).Status == 0xA700
        monkeypatch.undo()
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    assert _instances(settings) == 1


def test_data_set_offset_is_where_pydicom_ends_the_file_meta(tmp_path):
    """The hash the node records covers the data set alone: its start is where pydicom's own
    File Meta reader stops."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    from dicom_node.spool import data_set_offset

    path = tmp_path / "x.dcm"
    element = b"\x08\x00\x16\x00UI\x04\x001.23"  # (0008,0016) SOP Class UID
    path.write_bytes(_file_meta(Command(1, 1, True, CTImageStorage, "1.2.3.45"), ExplicitVRLittleEndian) + element)
    with open(path, "rb") as f:
        read_preamble(f, False)
        _read_file_meta_info(f)
        assert data_set_offset(path) == f.tell() == path.stat().st_size - len(element)


def test_a_command_fragment_announcing_4_gib_is_aborted_before_it_is_read(node):
    """A command set is at most 64 KiB: a PDV announcing more is refused from its header (A-ABORT,
    invalid PDU parameter value), not read into memory first."""
    sock = _associated(node)
    length = 0xFFFFFFF0
    sock.sendall(struct.pack(">BxI", 0x04, length) + struct.pack(">IBB", length - 4, 1, 0x03) + b"\x00" * 1024)
    body = _expect_abort(sock)
    assert body[2:4] == bytes((0x02, 0x06))
    _node_still_answers(node)
