"""DIMSE command sets of the node's services: C-STORE and C-ECHO (PS3.7 9.3.1, 9.3.5, Annex E).

A command set is always encoded Implicit VR Little Endian (PS3.7 6.3.1) and holds only group 0000
elements, each with a fixed VR (PS3.7 Annex E), so it is read and written here directly: pydicom
takes about 0.2 ms per request/response pair, which is a tenth of the node's budget for one small
instance. ``tests/dicom_node/test_dimse.py`` checks both directions against pydicom's codec.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from common.uids import ui_value_text, valid_uid

__all__ = [
    "C_STORE_RQ",
    "C_STORE_RSP",
    "C_ECHO_RQ",
    "C_ECHO_RSP",
    "C_CANCEL_RQ",
    "NO_DATA_SET",
    "STATUS_UNRECOGNIZED_OPERATION",
    "STATUS_PROCESSING_FAILURE",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SPOOL_ERROR",
    "STATUS_MISTYPED_ARGUMENT",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_SOP_CLASS_NOT_SUPPORTED",
    "STATUS_INVALID_SOP_INSTANCE",
    "CommandSetError",
    "request_status",
    "Command",
    "decode_command",
    "encode_response",
]

# (0000,0100) Command Field values (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_CANCEL_RQ = 0x0FFF
#: (0000,0800) Command Data Set Type: no data set follows (PS3.7 E.1)
NO_DATA_SET = 0x0101
#: PS3.7 C.4.2: the operation is not supported on this association
STATUS_UNRECOGNIZED_OPERATION = 0x0211
#: PS3.7 C.4.1: general failure of the SCP
STATUS_PROCESSING_FAILURE = 0x0110
#: PS3.4 B.2.3: C-STORE refused, out of resources (the data set could not even be written)
STATUS_OUT_OF_RESOURCES = 0xA700
#: PS3.7 Annex C: Mistyped argument (a C-ECHO-RQ announcing a data set)
STATUS_MISTYPED_ARGUMENT = 0x0212
#: PS3.4 B.2.3: Error, cannot understand (a C-STORE-RQ announcing no data set)
STATUS_CANNOT_UNDERSTAND = 0xC000
#: PS3.4 B.2.3 "Refused: Out of Resources" range: the node's code for a spool that could not
#: be written (an I/O error other than a full disk)
STATUS_SPOOL_ERROR = 0xA702
#: PS3.7 9.1.1.1.9 and Annex C (C-STORE, C-ECHO): Refused, SOP Class not supported: the Affected SOP Class UID
#: is missing, not a UID, or not the abstract syntax of the presentation context it came on
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
#: PS3.7 9.1.1.1.9 and Annex C (C-STORE): Invalid SOP Instance: the Affected SOP Instance UID is missing or
#: violates the UID construction rules (PS3.5 9.1)
STATUS_INVALID_SOP_INSTANCE = 0x0117

_AFFECTED_SOP_CLASS_UID = 0x00000002
_COMMAND_FIELD = 0x00000100
_MESSAGE_ID = 0x00000110
_MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
_PRIORITY = 0x00000700
_COMMAND_DATA_SET_TYPE = 0x00000800
_STATUS = 0x00000900
_AFFECTED_SOP_INSTANCE_UID = 0x00001000
_MOVE_ORIGINATOR_AE_TITLE = 0x00001030
_MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")


class CommandSetError(ValueError):
    """A command set that cannot be decoded (PS3.7 6.3.1): the association is aborted."""


@dataclass(frozen=True)
class Command:
    """The fields of a request command set the node acts on (PS3.7 9.3.1.1, 9.3.5.1)."""

    command_field: int
    message_id: int
    has_data_set: bool
    affected_sop_class_uid: str = ""
    affected_sop_instance_uid: str = ""
    priority: int = 0
    move_originator_ae_title: str = ""
    move_originator_message_id: int | None = None


def decode_command(data: bytes | bytearray) -> Command:
    """Decode an Implicit VR Little Endian command set (group 0000 only, PS3.7 6.3.1)."""
    elements: dict[int, bytes] = {}
    pos, end = 0, len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < 8:
            raise CommandSetError(f"command set: {end - pos} trailing bytes")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000:
            raise CommandSetError(f"command set: element ({group:04X},{element:04X}) outside group 0000")
        if length > end - pos:
            raise CommandSetError(f"command set: element (0000,{element:04X}) runs past the end")
        elements[element] = bytes(view[pos:pos + length])
        pos += length

    def us(tag: int, default: int | None = None) -> int:
        value = elements.get(tag & 0xFFFF)
        if value is None or len(value) != 2:
            if default is not None:
                return default
            raise CommandSetError(f"command set: (0000,{tag & 0xFFFF:04X}) missing or not US")
        return int(_US.unpack(value)[0])

    move_id = elements.get(_MOVE_ORIGINATOR_MESSAGE_ID & 0xFFFF)
    return Command(
        command_field=us(_COMMAND_FIELD),
        message_id=us(_MESSAGE_ID),
        has_data_set=us(_COMMAND_DATA_SET_TYPE) != NO_DATA_SET,
        affected_sop_class_uid=ui_value_text(elements.get(_AFFECTED_SOP_CLASS_UID & 0xFFFF, b"")),
        affected_sop_instance_uid=ui_value_text(elements.get(_AFFECTED_SOP_INSTANCE_UID & 0xFFFF, b"")),
        priority=us(_PRIORITY, 0),
        move_originator_ae_title=elements.get(_MOVE_ORIGINATOR_AE_TITLE & 0xFFFF, b"")
        .decode("ascii", "replace").strip(),
        move_originator_message_id=int(_US.unpack(move_id)[0]) if move_id and len(move_id) == 2 else None,
    )


def request_status(command: Command, abstract_syntax: str) -> int | None:
    """The failure status for a request whose mandatory command elements are missing or wrong,
    ``None`` when it may proceed; ``abstract_syntax`` is that of the presentation context the
    command came on.

    C-STORE-RQ (PS3.7 9.3.1.1) and C-ECHO-RQ (9.3.5.1) name the SOP Class in Affected SOP Class
    UID (M), which must be the context's abstract syntax (PS3.8 7.1.1.13: a context is negotiated
    for one abstract syntax), else 0x0122; a C-STORE-RQ names the instance in Affected SOP
    Instance UID (M), a valid UID (PS3.5 9.1), else 0x0117. Both UIDs are checked with the one
    strict validator, so a UID with a line feed, a NUL or a non-ASCII byte fails here. A C-STORE-RQ
    announcing no data set gets 0xC000, a C-ECHO-RQ announcing one 0x0212; any other command
    0x0211.
    """
    if command.command_field == C_STORE_RQ:
        if command.affected_sop_class_uid != abstract_syntax or not valid_uid(command.affected_sop_class_uid):
            return STATUS_SOP_CLASS_NOT_SUPPORTED
        if not valid_uid(command.affected_sop_instance_uid):
            return STATUS_INVALID_SOP_INSTANCE
        if not command.has_data_set:  # Command Data Set Type says none follows: nothing to store
            return STATUS_CANNOT_UNDERSTAND
        return None
    if command.command_field == C_ECHO_RQ:
        if command.affected_sop_class_uid != abstract_syntax or not valid_uid(command.affected_sop_class_uid):
            return STATUS_SOP_CLASS_NOT_SUPPORTED
        if command.has_data_set:  # a C-ECHO-RQ has none (PS3.7 9.3.5.1)
            return STATUS_MISTYPED_ARGUMENT
        return None
    return STATUS_UNRECOGNIZED_OPERATION


def _ui(tag: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"  # UI values are padded with NUL (PS3.5 6.2)
    return _ELEMENT.pack(0x0000, tag & 0xFFFF, len(value)) + value


def _us(tag: int, value: int) -> bytes:
    return _ELEMENT.pack(0x0000, tag & 0xFFFF, 2) + _US.pack(value)


def encode_response(request: Command, status: int) -> bytes:
    """The response command set to ``request`` (C-STORE-RSP PS3.7 9.3.1.2, C-ECHO-RSP 9.3.5.2),
    elements in ascending tag order with (0000,0000) Command Group Length first. The Affected
    SOP Class and Instance UIDs (U(=) in both responses) are returned only when the request's
    are valid UIDs."""
    body = b""
    if valid_uid(request.affected_sop_class_uid):
        body += _ui(_AFFECTED_SOP_CLASS_UID, request.affected_sop_class_uid)
    body += _us(_COMMAND_FIELD, request.command_field | 0x8000)
    body += _us(_MESSAGE_ID_BEING_RESPONDED_TO, request.message_id)
    body += _us(_COMMAND_DATA_SET_TYPE, NO_DATA_SET)
    body += _us(_STATUS, status)
    if valid_uid(request.affected_sop_instance_uid):
        body += _ui(_AFFECTED_SOP_INSTANCE_UID, request.affected_sop_instance_uid)
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body
