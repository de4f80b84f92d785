"""Read the attributes the database needs from a received object, without its pixel data.

Only the header is parsed (``stop_before_pixels``, large values deferred), so a 1 GB multi-frame
costs what its header costs. Attribute values are cleaned to fit the database columns; nothing
here is logged (the header holds patient data).
"""

from __future__ import annotations

import math
from io import BytesIO
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from .spool import valid_uid

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

    status = 0xC000


class UnreadableObjectError(HeaderError):
    """The bytes are not a decodable data set in the negotiated transfer syntax."""

    status = 0xC000


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


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
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
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        values = [float(v) for v in (value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value])]
    except Exception:
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _parse(path: Path) -> Dataset:
    """Parse the file meta and the data set up to group 0028 (Image Pixel module).

    Every attribute the node files by is in groups 0008-0028, so parsing stops before anything
    after them (private groups such as Siemens CSA, overlays, pixel data). The first
    :data:`_HEAD_BYTES` are parsed from memory (faster than many small reads); a header larger
    than that, or a deflated data set, is parsed from the file.
    """
    reached = False

    def stop_when(tag: BaseTag, vr: str | None, length: int) -> bool:
        nonlocal reached
        if tag.group > 0x0028:
            reached = True
        return reached

    with open(path, "rb") as f:
        head = f.read(_HEAD_BYTES)
        if len(head) < _HEAD_BYTES:
            return read_partial(BytesIO(head), stop_when=stop_when)
        try:
            ds = read_partial(BytesIO(head), stop_when=stop_when)
            if reached:
                return ds
        except Exception:  # ran off the end of the buffer: parse from the file
            pass
        reached = False
        f.seek(0)
        return read_partial(f, stop_when=stop_when, defer_size=_DEFER_BYTES)


def read_header(
    path: Path,
    *,
    affected_sop_class_uid: str | None = None,
    affected_sop_instance_uid: str | None = None,
) -> InstanceHeader:
    """Parse the header of a received file (PS3.10 format, as written by the SCP).

    Raises a :class:`HeaderError` subclass when the object cannot be filed.
    """
    try:
        ds = _parse(path)
        # Touch the elements we file by: a corrupt data set raises here, not later.
        uids = {
            kw: str(ds.get(kw, "") or "").strip().rstrip("\x00")
            for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
        }
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    except InvalidDicomError as exc:
        raise UnreadableObjectError(f"not a DICOM data set: {exc}") from None
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise UnreadableObjectError(f"cannot decode data set: {type(exc).__name__}: {exc}") from None

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

