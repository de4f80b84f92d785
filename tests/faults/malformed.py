"""Malformed inputs for the node: Part 10 files built byte by byte, raw C-STORE, raw PDUs.

``storescu`` cannot send a data set it cannot parse, so objects are sent with pynetdicom's
chunked sender (``STORE_SEND_CHUNKED_DATASET``: the bytes after the file meta go out as they are)
and PDUs are written on a plain socket.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

__all__ = [
    "CT_IMAGE_STORAGE", "MR_IMAGE_STORAGE", "LONG_VRS", "element", "dataset", "valid_elements", "part10",
    "StoreOutcome", "raw_store", "echo_ok", "associate_rq", "raw_exchange", "GARBAGE_PDUS",
]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


def element(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
    """One Explicit VR Little Endian element; ``length`` may lie about the value's length."""
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, n & 0xFFFFFFFF) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, n & 0xFFFF) + value


def _ui(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" * (len(raw) % 2)


def _text(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b" " * (len(raw) % 2)


def valid_elements(study: str, series: str, sop: str, sop_class: str = CT_IMAGE_STORAGE,
                   pixels: bytes = b"\x00\x01" * 64) -> dict[int, tuple[bytes, bytes]]:
    """tag -> (VR, value) of a small, valid 8x8 CT image."""
    return {
        0x00080016: (b"UI", _ui(sop_class)),
        0x00080018: (b"UI", _ui(sop)),
        0x00080060: (b"CS", _text("CT")),
        0x00100010: (b"PN", _text("FAULT^TEST")),
        0x00100020: (b"LO", _text("FAULT-1")),
        0x0020000D: (b"UI", _ui(study)),
        0x0020000E: (b"UI", _ui(series)),
        0x00200013: (b"IS", _text("1")),
        0x00280002: (b"US", struct.pack("<H", 1)),
        0x00280004: (b"CS", _text("MONOCHROME2")),
        0x00280010: (b"US", struct.pack("<H", 8)),
        0x00280011: (b"US", struct.pack("<H", 8)),
        0x00280100: (b"US", struct.pack("<H", 16)),
        0x00280101: (b"US", struct.pack("<H", 12)),
        0x00280102: (b"US", struct.pack("<H", 11)),
        0x00280103: (b"US", struct.pack("<H", 0)),
        0x7FE00010: (b"OW", pixels),
    }


def dataset(elements: dict[int, tuple[bytes, bytes]]) -> bytes:
    return b"".join(element(tag, vr, value) for tag, (vr, value) in sorted(elements.items()))


def part10(path: Path, body: bytes, *, sop_instance: str, sop_class: str = CT_IMAGE_STORAGE,
           transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """A Part 10 file: a valid file meta (what the C-STORE-RQ announces), then ``body`` as it is."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    with open(path, "wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(f), meta, enforce_standard=True)
        f.write(body)
    return path


@dataclass(frozen=True)
class StoreOutcome:
    """What the node did with one C-STORE: a status, or no association / no answer."""

    status: int | None
    established: bool

    @property
    def success(self) -> bool:
        return self.status is not None and (self.status == 0 or self.status in (0x0001, 0xB000, 0xB006, 0xB007))

    @property
    def refused(self) -> bool:
        return not self.success


def raw_store(port: int, path: Path, *, called_ae: str, sop_class: str = CT_IMAGE_STORAGE,
              transfer_syntax: str = ExplicitVRLittleEndian, timeout: float = 30) -> StoreOutcome:
    """C-STORE the file's data set bytes as they are; one association."""
    ae = AE(ae_title="FAULTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(sop_class, [transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return StoreOutcome(None, False)
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        rsp = assoc.send_c_store(path)
        status = rsp.get("Status") if rsp is not None else None
        return StoreOutcome(None if status is None else int(status), True)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if assoc.is_established:
            assoc.release()


def echo_ok(port: int, called_ae: str, timeout: float = 10) -> bool:
    ae = AE(ae_title="FAULTECHO")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        return False
    try:
        rsp = assoc.send_c_echo()
        return rsp is not None and rsp.get("Status") == 0
    finally:
        if assoc.is_established:
            assoc.release()


# -- raw PDUs (PS3.8 9.3) ------------------------------------------------------------------------

def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(value)) + value


def associate_rq(called_ae: str, calling_ae: str = "GARBAGE", extra_items: bytes = b"") -> bytes:
    """An A-ASSOCIATE-RQ proposing Verification (Implicit VR Little Endian), valid unless ``extra_items``."""
    context = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2"))
    user = _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    body = (struct.pack(">Hxx", 1) + called_ae.ljust(16).encode() + calling_ae.ljust(16).encode() + b"\x00" * 32
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + context + user + extra_items)
    return struct.pack(">BxI", 0x01, len(body)) + body


def raw_exchange(port: int, chunks: list[bytes], *, read_timeout: float = 5.0) -> bytes:
    """Write ``chunks`` (reading the node's answer after each), then close; returns all that was read.

    An empty bytes object means the node said nothing; the connection is always closed here.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        for chunk in chunks:
            try:
                s.sendall(chunk)
            except OSError:  # the node closed the connection: that is an answer
                break
            try:
                data = s.recv(65536)
            except (TimeoutError, OSError):
                data = b""
            received += data
    return received


def _garbage_pdata() -> bytes:
    pdv = struct.pack(">IB", 0x200, 1) + bytes((i * 37) % 256 for i in range(0x1FF))
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


#: name -> how to build the chunks (given the node's AE title). Each is sent on its own connection.
GARBAGE_PDUS: dict[str, Callable[[str], list[bytes]]] = {
    "unknown PDU type": lambda ae: [b"\xff" + bytes(range(255)) * 4],
    "A-ASSOCIATE-RQ claiming 4 GiB": lambda ae: [b"\x01\x00\xff\xff\xff\xff" + b"\x00\x01" * 32],
    "A-ASSOCIATE-RQ cut in half": lambda ae: [associate_rq(ae)[:40]],
    "zero-length A-ASSOCIATE-RQ": lambda ae: [b"\x01\x00\x00\x00\x00\x00"],
    "P-DATA-TF before any association": lambda ae: [_garbage_pdata()],
    "A-ASSOCIATE-RQ with an unknown item": lambda ae: [associate_rq(ae, extra_items=b"\x77\x00\x00\x10" + b"\xaa" * 16)],
    "A-ASSOCIATE-RQ with an item longer than the PDU": lambda ae: [associate_rq(ae, extra_items=b"\x50\x00\xff\xf0")],
    "garbage P-DATA-TF in an association": lambda ae: [associate_rq(ae), _garbage_pdata()],
    "second A-ASSOCIATE-RQ in an association": lambda ae: [associate_rq(ae), associate_rq(ae)],
    "HTTP request": lambda ae: [b"GET / HTTP/1.1\r\nHost: node\r\n\r\n"],
}


def fresh_uids() -> tuple[str, str, str]:
    return generate_uid(), generate_uid(), generate_uid()
