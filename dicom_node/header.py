"""Read the attributes the database needs from a received object, without its pixel data.

Only the header up to group 0028 is parsed, never the pixel data, so a 1 GB multi-frame costs
what its header costs. Attribute values are cleaned to fit the database columns; nothing
here is logged (the header holds patient data).
"""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from common.uids import ui_value_text, valid_uid

from .dimse import STATUS_CANNOT_UNDERSTAND

__all__ = [
    "HeaderError",
    "UnreadableObjectError",
    "MissingAttributeError",
    "SOPClassMismatchError",
    "SOPInstanceMismatchError",
    "InstanceHeader",
    "read_header",
]

_DEFER_BYTES = 64 * 1024
_HEAD_BYTES = 64 * 1024


class HeaderError(ValueError):
    """A received object cannot be accepted; ``status`` is the C-STORE status (PS3.4 B.2.3)."""

    status = STATUS_CANNOT_UNDERSTAND


class UnreadableObjectError(HeaderError):
    """The bytes are not a decodable data set in the negotiated transfer syntax."""

    status = STATUS_CANNOT_UNDERSTAND


class MissingAttributeError(HeaderError):
    """A Type 1 UID the node files by (Study/Series/SOP Instance/SOP Class UID) is absent or invalid."""

    status = 0xC001


class SOPInstanceMismatchError(HeaderError):
    """SOP Instance UID (0008,0018) differs from the Affected SOP Instance UID of the C-STORE-RQ."""

    status = 0xC002


class SOPClassMismatchError(HeaderError):
    """SOP Class UID (0008,0016) differs from the Affected SOP Class UID: PS3.4 B.2.3 status A900."""

    status = 0xA900


@dataclass(frozen=True)
class InstanceHeader:
    """What the database records about one received instance (and its series and study)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    # study
    patient_id: str | None = None
    patient_name: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    # series
    modality: str | None = None
    body_part_examined: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    # instance
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int | None = None
    image_position_patient: list[float] | None = None
    image_orientation_patient: list[float] | None = None
    pixel_spacing: list[float] | None = None


def _text(ds: Dataset, keyword: str, length: int) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed optional value must not refuse the instance
        return None
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = "\\".join(str(v) for v in value)
    text = str(value).strip().replace("\x00", "")
    return text[:length] or None


def _raw_text(ds: Dataset, keyword: str, vrs: tuple[str, ...]) -> str | None:
    """The value of a still undecoded Little Endian element whose VR is one of ``vrs`` (all
    ASCII-only VRs: UI, IS, DS), as text; ``None`` when pydicom has to decode it.

    Decoding these few values directly skips pydicom's per-element conversion (about 15 us
    each, a tenth of the node's header cost); the result is the same string pydicom gives.
    """
    tag = _KEYWORD_TAGS[keyword]
    if tag not in ds:
        return None
    elem = ds.get_item(tag)
    if not isinstance(elem, RawDataElement) or not elem.is_little_endian or elem.value is None:
        return None
    vr = elem.VR or dictionary_VR(tag)
    if vr not in vrs:
        return None
    return elem.value.decode("latin-1")


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        text = _raw_text(ds, keyword, ("IS",))
        if text is not None:
            with contextlib.suppress(_NotSimple):
                return _is_value(text)
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0]
        number = int(float(value))
    except Exception:
        return None
    return number if -(2**31) <= number < 2**31 else None


def _floats(ds: Dataset, keyword: str, count: int) -> list[float] | None:
    try:
        text = _raw_text(ds, keyword, ("DS",))
        if text is not None:
            with contextlib.suppress(_NotSimple):
                return _ds_values(text, count)
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        values = [float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])]
    except Exception:
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _vr(ds: Dataset, keyword: str) -> str:
    """The VR the element was sent with (the dictionary's for Implicit VR)."""
    tag = _KEYWORD_TAGS[keyword]
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        return str(elem.VR or dictionary_VR(tag))
    return str(ds[tag].VR)


def _uid(ds: Dataset, keyword: str) -> str:
    """A UID attribute's value as it was sent, less its one NUL pad byte (PS3.5 6.2): nothing
    else is stripped, so that :func:`~common.uids.valid_uid` refuses a line feed, a space or a
    NUL inside. Empty when absent."""
    tag = _KEYWORD_TAGS[keyword]
    if tag not in ds:
        return ""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        return ui_value_text(elem.value or b"")
    value = ds[tag].value
    return value if isinstance(value, str) else "\\".join(str(v) for v in (value or ()))


# -- fast path: a raw element scan of Little Endian data sets ----------------------------------
#
# pydicom's parser costs ~1 ms for a typical CT header, a sizeable share of the node's CPU per
# instance. Almost everything PACS send is Little Endian (explicit for all compressed transfer
# syntaxes), so the elements up to group 0028 are located with ``struct`` and only the ~20 the
# node files by are handed to pydicom, as raw elements, for decoding (character sets included).
# Anything unusual (big endian, deflated, a header beyond the first 64 KiB, inconsistent lengths)
# goes to pydicom's parser, which also produces the error message for a corrupt object.

_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"{keyword} is not in pydicom's data dictionary")
    return tag


#: The attributes the node files by (keyword -> tag); the fast scan keeps only these.
_KEYWORD_TAGS: dict[str, int] = {
    kw: _tag(kw)
    for kw in (
        "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyDate", "AccessionNumber",
        "Modality", "StudyDescription", "SeriesDescription", "PatientName", "PatientID",
        "BodyPartExamined", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
        "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames",
        "Rows", "Columns", "PixelSpacing",
    )
}
_WANTED = frozenset(_KEYWORD_TAGS.values())
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


class _Unusual(Exception):
    """The fast scan cannot handle this data set: use pydicom."""


def _element(buf: bytes, pos: int, explicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR, value length, offset of the value) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise _Unusual
    group, elem = _TAG.unpack_from(buf, pos)
    tag = group << 16 | elem
    if group == 0xFFFE:  # item / delimiters have no VR
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    if not explicit:
        return tag, None, _U32.unpack_from(buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _Unusual
        return tag, vr, _U32.unpack_from(buf, pos + 8)[0], pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _Unusual
    return tag, vr, _U16.unpack_from(buf, pos + 6)[0], pos + 8


def _skip_sequence(buf: bytes, pos: int, explicit: bool) -> int:
    """Offset after an undefined-length sequence whose items start at ``pos``."""
    while True:
        tag, _, length, pos = _element(buf, pos, explicit)
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Unusual
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements, up to the item delimiter
            tag, _, length, pos = _element(buf, pos, explicit)
            if tag == _ITEM_END:
                break
            pos = _skip_sequence(buf, pos, explicit) if length == _UNDEFINED else pos + length


_EXPLICIT_HEADER = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length (PS3.5 7.1.2)
_IMPLICIT_HEADER = struct.Struct("<HHI")  # group, element, 32-bit length (PS3.5 7.1.3)


def _scan(
    buf: bytes, pos: int, explicit: bool, stop_group: int, end: int | None = None
) -> tuple[dict[int, RawDataElement], int]:
    """Raw elements of interest up to (not including) ``stop_group`` or offset ``end``; and where
    the scan ended. The element headers are unpacked here rather than by :func:`_element`
    (same rules): this loop runs for every element of every received header."""
    found: dict[int, RawDataElement] = {}
    size = len(buf)
    limit = size if end is None else end
    explicit_header = _EXPLICIT_HEADER.unpack_from
    implicit_header = _IMPLICIT_HEADER.unpack_from
    u32 = _U32.unpack_from
    while pos < limit:
        if pos + 8 > size:
            raise _Unusual
        vr: bytes | None
        if explicit:
            group, elem, vr, length = explicit_header(buf, pos)
            if group == 0xFFFE:  # item / delimiters have no VR
                vr, length, value_at = None, u32(buf, pos + 4)[0], pos + 8
            elif vr in _LONG_VRS:
                if pos + 12 > size:
                    raise _Unusual
                length, value_at = u32(buf, pos + 8)[0], pos + 12
            elif 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90:
                value_at = pos + 8
            else:
                raise _Unusual
        else:
            group, elem, length = implicit_header(buf, pos)
            vr, value_at = None, pos + 8
        if group >= stop_group:
            return found, pos
        if length == _UNDEFINED:
            pos = _skip_sequence(buf, value_at, explicit)
            continue
        end = value_at + length
        if end > size:
            raise _Unusual
        tag = group << 16 | elem
        if tag in _WANTED or group == 0x0002:
            found[tag] = RawDataElement(
                BaseTag(tag), vr.decode() if vr else None, length, buf[value_at:end], value_at,
                not explicit, True,
            )
        pos = end
    return found, pos


@dataclass(frozen=True)
class _Scanned:
    """What :func:`_fast_scan` found: the raw File Meta and data set elements of interest."""

    meta: dict[int, RawDataElement]
    elements: dict[int, RawDataElement]
    transfer_syntax_uid: str
    #: offset of the first element after group 0028 (the structure walk may start there)
    end: int

    def dataset(self) -> Dataset:
        """The elements as a pydicom data set (decoded by pydicom on access)."""
        # keyed by the elements' BaseTag (pydicom's own data sets are; its writers call .group on keys)
        ds = Dataset({elem.tag: elem for elem in self.elements.values()})
        ds.file_meta = FileMetaDataset(Dataset({elem.tag: elem for elem in self.meta.values()}))
        ds.set_original_encoding(self.transfer_syntax_uid == _IMPLICIT_LE, True, None)
        return ds


def _fast_scan(head: bytes, complete: bool) -> _Scanned:
    """The elements up to group 0028 from the file's first bytes: the elements before
    ``_Scanned.end`` have been checked to fit (values within ``head``, undefined-length sequences
    delimited). Raises :class:`_Unusual` when pydicom's parser has to do it."""
    if len(head) < 132 or head[128:132] != b"DICM":
        raise _Unusual
    # (0002,0000) File Meta Information Group Length, UL: where the meta ends (PS3.10 7.1)
    if head[132:138] != b"\x02\x00\x00\x00UL":
        raise _Unusual
    meta_end = 144 + _U32.unpack_from(head, 140)[0]
    meta_raw, pos = _scan(head, 132, True, 0x0003, end=meta_end)
    if pos != meta_end:
        raise _Unusual
    ts_element = meta_raw.get(0x00020010)
    ts = ts_element.value.decode("latin-1").strip("\x00 ") if ts_element is not None and ts_element.value else ""
    if not ts or ts == _EXPLICIT_BE or ts in _DEFLATED:
        raise _Unusual
    elements, end = _scan(head, pos, ts != _IMPLICIT_LE, 0x0029)
    if end >= len(head) and not complete:
        raise _Unusual  # the header may go on beyond what was read
    return _Scanned(meta_raw, elements, ts, end)


def _parse(f: BinaryIO) -> Dataset:
    """Parse, with pydicom, the file meta and the data set up to group 0028 (Image Pixel module)
    of the open file ``f`` (what :func:`_fast_scan` leaves: big endian, deflated, a header beyond
    the first 64 KiB, inconsistent lengths).

    Every attribute the node files by is in groups 0008-0028, so parsing stops before anything
    after them (private groups such as Siemens CSA, overlays, pixel data).
    """
    reached = False

    def stop_when(tag: BaseTag, vr: str | None, length: int) -> bool:
        nonlocal reached
        if tag.group > 0x0028:
            reached = True
        return reached

    f.seek(0)
    return read_partial(f, stop_when=stop_when, defer_size=_DEFER_BYTES)


class _Walk:
    """Reads element headers (tag, VR, length) of a file without reading values.

    PS3.5 7.1: explicit VR (2- or 4-byte lengths by VR), implicit VR (4-byte lengths), little or
    big endian; undefined lengths end with delimitation items (7.5).
    """

    def __init__(self, f: BinaryIO, size: int, explicit: bool, little: bool, head: bytes = b"") -> None:
        self.f, self.size, self.explicit, self.head = f, size, explicit, head
        self.u16 = struct.Struct("<H" if little else ">H")
        self.u32 = struct.Struct("<I" if little else ">I")
        self.tag = struct.Struct("<HH" if little else ">HH")

    def element(self, pos: int) -> tuple[int, int, int, bytes | None]:
        """(tag, length, offset of the value, VR) of the element at ``pos``."""
        if pos + 12 <= len(self.head):  # the first bytes of the file, already read
            head = self.head[pos:pos + 12]
        else:
            self.f.seek(pos)
            head = self.f.read(12)
        if len(head) < 8:
            raise HeaderError(f"the data set ends inside an element header at byte {pos}")
        group, elem = self.tag.unpack_from(head, 0)
        tag = group << 16 | elem
        if group == 0xFFFE or not self.explicit:
            return tag, self.u32.unpack_from(head, 4)[0], pos + 8, None
        vr = head[4:6]
        if vr in _LONG_VRS:
            if len(head) < 12:
                raise HeaderError(f"the data set ends inside an element header at byte {pos}")
            return tag, self.u32.unpack_from(head, 8)[0], pos + 12, vr
        return tag, self.u16.unpack_from(head, 6)[0], pos + 8, vr

    def elements(self, pos: int, end: int | None, stop_at_item_end: bool = False) -> int:
        """Walk elements from ``pos`` to ``end`` (or to an item delimiter); where they end."""
        limit = self.size if end is None else end
        while pos < limit:
            tag, length, value_at, vr = self.element(pos)
            if stop_at_item_end and tag == _ITEM_END:
                return value_at
            if length == _UNDEFINED:
                pos = self.items(value_at)
                continue
            pos = value_at + length
            if pos > limit:
                raise HeaderError(
                    f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) declares {length} bytes, "
                    f"{pos - limit} more than the data set holds"
                )
        if stop_at_item_end:
            raise HeaderError("an item of undefined length has no delimiter")
        return pos

    def items(self, pos: int) -> int:
        """Walk the items of an undefined-length sequence or pixel data; where it ends."""
        while True:
            tag, length, value_at, _ = self.element(pos)
            if tag == _SEQ_END:
                return value_at
            if tag != _ITEM:
                raise HeaderError(f"expected an item at byte {pos}, found ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            if length == _UNDEFINED:
                pos = self.elements(value_at, None, stop_at_item_end=True)
                continue
            pos = value_at + length
            if pos > self.size:
                raise HeaderError(f"an item declares {length} bytes, {pos - self.size} more than the data set holds")


def check_structure(path: Path) -> None:
    """Check that every element of the received data set fits in it (no length runs past the
    end, no truncated pixel data, delimiters present); values are not read.

    Raises :class:`UnreadableObjectError`. Deflated data sets are checked by pydicom instead
    (their bytes cannot be walked without inflating them).
    """
    try:
        with open(path, "rb", buffering=65536) as f:
            _check_structure(f, f.read(_HEAD_BYTES))
    except OSError as exc:
        raise UnreadableObjectError(f"malformed data set: {type(exc).__name__}: {exc}") from None


def _check_structure(f: BinaryIO, head: bytes, resume_at: int = 0) -> None:
    """:func:`check_structure` on an open file whose first bytes (``head``) are already read;
    the data set's elements before ``resume_at`` are known to fit (:func:`_fast_scan`)."""
    try:
        size = f.seek(0, 2)
        if head[128:132] != b"DICM":
            raise HeaderError("no DICM prefix")
        meta_walk = _Walk(f, size, explicit=True, little=True, head=head)
        tag, length, value_at, _ = meta_walk.element(132)
        if tag != 0x00020000:
            raise HeaderError("no File Meta Information Group Length")
        if value_at + 4 <= len(head):
            meta_length = _U32.unpack_from(head, value_at)[0]
        else:
            f.seek(value_at)
            meta_length = _U32.unpack_from(f.read(4), 0)[0]
        meta_end = value_at + 4 + meta_length
        ts = ""
        pos = value_at + 4
        while pos < meta_end:  # the file meta is always explicit VR little endian (PS3.10 7.1)
            tag, length, value_at, _ = meta_walk.element(pos)
            if tag == 0x00020010 and length < 256:
                f.seek(value_at)
                ts = f.read(length).decode("ascii", "replace").strip("\x00 ")
            pos = value_at + length
        if ts in _DEFLATED:
            return
        walk = _Walk(f, size, explicit=ts != _IMPLICIT_LE, little=ts != _EXPLICIT_BE, head=head)
        end = walk.elements(max(meta_end, resume_at), None)
        if end != size:
            raise HeaderError(f"{size - end} bytes after the last element")
    except HeaderError as exc:
        raise UnreadableObjectError(f"malformed data set: {exc}") from None
    except (OSError, struct.error, InvalidDicomError) as exc:
        raise UnreadableObjectError(f"malformed data set: {type(exc).__name__}: {exc}") from None


# -- direct decoding of the common case ---------------------------------------------------------
#
# pydicom's value conversion (a DataElement per value, character set lookup, validation) is
# about half of the header's cost. For values in ASCII without ESC, every DICOM character set
# without code extensions decodes to the same text (PS3.5 6.1: G0 is ASCII), so such
# values are decoded here with pydicom 3's rules for their VR (trailing padding stripped per
# value for SH/LO, of the whole value for CS/DA/PN). Anything else (another VR than the
# dictionary's, a byte outside ASCII, a value that would be refused) leaves the whole header to
# pydicom, which stays the reference (tests/dicom_node/test_header.py compares the two).

_TEXT_FIELDS: tuple[tuple[str, str, int, str], ...] = (
    # field, keyword, column length, dictionary VR
    ("patient_id", "PatientID", 64, "LO"),
    ("patient_name", "PatientName", 324, "PN"),
    ("accession_number", "AccessionNumber", 16, "SH"),
    ("study_date", "StudyDate", 8, "DA"),
    ("study_description", "StudyDescription", 64, "LO"),
    ("modality", "Modality", 16, "CS"),
    ("body_part_examined", "BodyPartExamined", 64, "CS"),
    ("series_description", "SeriesDescription", 64, "LO"),
)
_IS_FIELDS = (("series_number", "SeriesNumber"), ("instance_number", "InstanceNumber"),
              ("number_of_frames", "NumberOfFrames"))
_US_FIELDS = (("rows", "Rows"), ("columns", "Columns"))
_DS_FIELDS = (("image_position_patient", "ImagePositionPatient", 3),
              ("image_orientation_patient", "ImageOrientationPatient", 6),
              ("pixel_spacing", "PixelSpacing", 2))
_UID_FIELDS = (("study_instance_uid", "StudyInstanceUID"), ("series_instance_uid", "SeriesInstanceUID"),
               ("sop_instance_uid", "SOPInstanceUID"), ("sop_class_uid", "SOPClassUID"))
_ESC = 0x1B


class _NotSimple(Exception):
    """A value pydicom has to decode."""


def _ascii(elem: RawDataElement, vr: str) -> str:
    """The value of ``elem`` as text, if it was sent with ``vr`` (or implicitly) and is ASCII."""
    if elem.VR is not None and elem.VR != vr:
        raise _NotSimple
    raw = elem.value or b""
    if not raw.isascii() or _ESC in raw:
        raise _NotSimple
    return raw.decode("ascii")


def _simple_text(elem: RawDataElement, vr: str, length: int) -> str | None:
    """:func:`_text` for an ASCII value: pydicom's conversion for ``vr``, then the same clean-up."""
    text = _ascii(elem, vr)
    if vr in ("SH", "LO"):  # convert_text: each value's trailing padding
        text = "\\".join(value.rstrip("\x00 ") for value in text.split("\\"))
    elif vr == "PN":  # convert_PN: the whole value's padding, then each name's empty trailing groups
        text = "\\".join(name.rstrip("=") for name in text.rstrip(" \x00").split("\\"))
    else:  # CS, DA (multi_string): the whole value's trailing padding
        text = text.rstrip(" \x00")
    text = text.strip().replace("\x00", "")
    return text[:length] or None


#: The characters of IS and DS values (PS3.5 6.2), and the value delimiter.
_NUMBER_CHARACTERS = frozenset("0123456789+-.eE \\")


def _number_texts(text: str) -> list[str]:
    """The values of an IS or DS element without its trailing padding; raises
    :class:`_NotSimple` for anything outside the repertoire (pydicom decides those)."""
    body = text.rstrip(" \x00")
    if not _NUMBER_CHARACTERS.issuperset(body):
        raise _NotSimple
    return body.split("\\")


def _is_value(text: str) -> int | None:
    """An IS value (its first if several) as a 32-bit integer, else None, as pydicom reads it:
    a later value that overflows fails the element, unless one before it (not empty) is no number
    (pydicom then keeps the rest as text). Raises :class:`_NotSimple`."""
    values = _number_texts(text)
    try:
        for value in values[1:]:
            if not value.strip():
                continue  # an empty value
            try:
                int(float(value))
            except ValueError:
                break
        if not values[0].strip():
            return None
        number = int(float(values[0]))
    except (ValueError, OverflowError):
        return None
    return number if -(2**31) <= number < 2**31 else None


def _ds_values(text: str, count: int) -> list[float] | None:
    """``count`` finite DS values, else None, as pydicom reads them. Raises :class:`_NotSimple`."""
    values = _number_texts(text.strip())
    if values == [""]:
        return None
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return None
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


def _decode_simple(
    scanned: _Scanned, affected_sop_class_uid: str | None, affected_sop_instance_uid: str | None
) -> InstanceHeader | None:
    """The header decoded directly from the raw elements (see above); ``None`` when pydicom has
    to decode it, or when it is to be refused (pydicom's path then raises the right error)."""
    raw = scanned.elements
    charset = raw.get(_KEYWORD_TAGS["SpecificCharacterSet"])
    if charset is not None and b"2022" in (charset.value or b""):
        return None  # ISO 2022 code extensions (PS3.5 6.1.2.5): pydicom's decoding, with its quirks
    fields: dict[str, object] = {"transfer_syntax_uid": scanned.transfer_syntax_uid[:64]}
    try:
        for field_name, keyword in _UID_FIELDS:
            elem = raw.get(_KEYWORD_TAGS[keyword])
            if elem is None or elem.VR not in (None, "UI"):
                return None
            uid = ui_value_text(elem.value or b"")
            if not valid_uid(uid):
                return None  # refused on pydicom's path, with the reason
            fields[field_name] = uid
        if affected_sop_class_uid and fields["sop_class_uid"] != affected_sop_class_uid.strip():
            return None
        if affected_sop_instance_uid and fields["sop_instance_uid"] != affected_sop_instance_uid.strip():
            return None
        for field_name, keyword, length, vr in _TEXT_FIELDS:
            elem = raw.get(_KEYWORD_TAGS[keyword])
            fields[field_name] = None if elem is None else _simple_text(elem, vr, length)
        for field_name, keyword in _IS_FIELDS:
            elem = raw.get(_KEYWORD_TAGS[keyword])
            fields[field_name] = None if elem is None else _is_value(_ascii(elem, "IS"))
        for field_name, keyword in _US_FIELDS:
            elem = raw.get(_KEYWORD_TAGS[keyword])
            if elem is None or not elem.value:
                fields[field_name] = None
                continue
            if elem.VR not in (None, "US") or len(elem.value) % 2:
                return None
            fields[field_name] = _U16.unpack_from(elem.value, 0)[0]
        for field_name, keyword, count in _DS_FIELDS:
            elem = raw.get(_KEYWORD_TAGS[keyword])
            fields[field_name] = None if elem is None else _ds_values(_ascii(elem, "DS"), count)
    except _NotSimple:
        return None
    # each field was given its own type above (UIDs and texts str, IS/US int, DS floats)
    return InstanceHeader(**fields)  # type: ignore[arg-type]  # see above


#: How many first bytes of a file :func:`parse_head` needs.
HEAD_BYTES = _HEAD_BYTES


@dataclass(frozen=True)
class EarlyHeader:
    """What :func:`parse_head` found in the first bytes of a file."""

    #: the header, or the reason the object will be refused
    outcome: "InstanceHeader | HeaderError"
    #: offset up to which the structure has been checked (the walk resumes there)
    checked_to: int


def parse_head(
    head: bytes,
    *,
    affected_sop_class_uid: str | None = None,
    affected_sop_instance_uid: str | None = None,
) -> EarlyHeader | None:
    """The header from the first :data:`HEAD_BYTES` of a file whose remaining bytes are still
    arriving, so that the SCP parses it, and checks the structure of what it scanned, while the
    pixel data are in transit.

    Returns ``None`` when the fast Little Endian scan cannot decide from these bytes alone (the
    full :func:`read_header` then does the work). Pass the result to :func:`read_header` as
    ``early``.
    """
    if len(head) < HEAD_BYTES:
        return None
    try:
        scanned = _fast_scan(head[:HEAD_BYTES], complete=False)
    except Exception:
        return None
    try:
        return EarlyHeader(_decode_scanned(scanned, affected_sop_class_uid, affected_sop_instance_uid), scanned.end)
    except HeaderError as exc:
        return EarlyHeader(exc, scanned.end)


def read_header(
    path: Path,
    *,
    affected_sop_class_uid: str | None = None,
    affected_sop_instance_uid: str | None = None,
    early: EarlyHeader | None = None,
) -> InstanceHeader:
    """Parse the header of a received file (PS3.10 format, as written by the SCP).

    ``early`` is what :func:`parse_head` found in the file's first bytes (for the same affected
    UIDs); the structure of the whole file is checked here in any case.
    Raises a :class:`HeaderError` subclass when the object cannot be filed.
    """
    try:
        f = open(path, "rb", buffering=65536)
    except OSError as exc:
        raise UnreadableObjectError(f"cannot read the received object: {exc}") from None
    with f:
        head = f.read(_HEAD_BYTES)
        _check_structure(f, head, resume_at=early.checked_to if early is not None else 0)
        if early is None:
            return _header(f, head, affected_sop_class_uid, affected_sop_instance_uid)
        if isinstance(early.outcome, HeaderError):
            raise early.outcome
        return early.outcome


def _decode_scanned(
    scanned: _Scanned, affected_sop_class_uid: str | None, affected_sop_instance_uid: str | None
) -> InstanceHeader:
    header = _decode_simple(scanned, affected_sop_class_uid, affected_sop_instance_uid)
    if header is not None:
        return header
    return _decode(scanned.dataset(), affected_sop_class_uid, affected_sop_instance_uid)


def _header(f: BinaryIO, head: bytes, affected_sop_class_uid: str | None, affected_sop_instance_uid: str | None) -> InstanceHeader:
    try:
        scanned = _fast_scan(head, complete=len(head) < _HEAD_BYTES)
    except (_Unusual, struct.error):
        pass
    else:
        try:
            return _decode_scanned(scanned, affected_sop_class_uid, affected_sop_instance_uid)
        except HeaderError:
            raise
        except Exception as exc:  # pydicom raises many types for corrupt input
            raise UnreadableObjectError(f"cannot decode data set: {type(exc).__name__}: {exc}") from None
    try:
        ds = _parse(f)
    except InvalidDicomError as exc:
        raise UnreadableObjectError(f"not a DICOM data set: {exc}") from None
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise UnreadableObjectError(f"cannot decode data set: {type(exc).__name__}: {exc}") from None
    return _decode(ds, affected_sop_class_uid, affected_sop_instance_uid)


def _decode(ds: Dataset, affected_sop_class_uid: str | None, affected_sop_instance_uid: str | None) -> InstanceHeader:
    try:
        # Touch the elements we file by: a corrupt data set raises here, not later.
        uids = {
            kw: _uid(ds, kw)
            for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        }
        # A UID element encoded with another VR (e.g. US 1 -> "1") decodes to something that
        # looks like a UID: file by it only when it was really sent as UI (PS3.5 6.2).
        wrong_vr = [kw for kw in uids if _KEYWORD_TAGS[kw] in ds and _vr(ds, kw) != "UI"]
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    except InvalidDicomError as exc:
        raise UnreadableObjectError(f"not a DICOM data set: {exc}") from None
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise UnreadableObjectError(f"cannot decode data set: {type(exc).__name__}: {exc}") from None

    if wrong_vr:
        raise MissingAttributeError(f"{wrong_vr[0]} is encoded with VR {ds[wrong_vr[0]].VR}, not UI")
    for keyword, value in uids.items():
        if not valid_uid(value):
            what = "missing" if not value else "not a valid UID"
            raise MissingAttributeError(f"{keyword} is {what}")
    if affected_sop_class_uid and uids["SOPClassUID"] != affected_sop_class_uid.strip():
        raise SOPClassMismatchError(
            f"SOPClassUID {uids['SOPClassUID']} differs from Affected SOP Class UID {affected_sop_class_uid}"
        )
    if affected_sop_instance_uid and uids["SOPInstanceUID"] != affected_sop_instance_uid.strip():
        raise SOPInstanceMismatchError("SOPInstanceUID differs from the Affected SOP Instance UID")

    return InstanceHeader(
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax[:64],
        patient_id=_text(ds, "PatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        accession_number=_text(ds, "AccessionNumber", 16),
        study_date=_text(ds, "StudyDate", 8),
        study_description=_text(ds, "StudyDescription", 64),
        modality=_text(ds, "Modality", 16),
        body_part_examined=_text(ds, "BodyPartExamined", 64),
        series_description=_text(ds, "SeriesDescription", 64),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        image_position_patient=_floats(ds, "ImagePositionPatient", 3),
        image_orientation_patient=_floats(ds, "ImageOrientationPatient", 6),
        pixel_spacing=_floats(ds, "PixelSpacing", 2),
    )

