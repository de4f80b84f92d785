"""Header parts shared by every object we write (SR and presentation states).

* General Equipment (PS3.3 C.7.5.1): Manufacturer "medrega-gateway", our version.
* Contributing Equipment (PS3.3 C.12.1, IHE AIR): one item for the algorithm, with a
  Device UID that changes whenever the weights change.
* Deterministic dates: every date/time we write comes from ``content_datetime``.
* Character set: ISO_IR 192 (UTF-8), with person names re-encoded from the source's
  character set (PS3.5 6.1).
"""

from __future__ import annotations

import datetime
import functools
import importlib.metadata

import highdicom
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM, PersonName

from common.uids import derive_uid

from .coding import PROCESSING_EQUIPMENT
from .content import AlgorithmInfo
from .vr import LO, ST, fit

__all__ = [
    "MANUFACTURER",
    "CHARACTER_SET",
    "gateway_version",
    "algorithm_device_uid",
    "algorithm_equipment",
    "contributing_equipment",
    "finalize_header",
    "with_type2_defaults",
]

#: Manufacturer (0008,0070) of every object we create.
MANUFACTURER = "medrega-gateway"
#: Specific Character Set (0008,0005) of every object we create: Unicode in UTF-8.
CHARACTER_SET = "ISO_IR 192"


@functools.cache
def gateway_version() -> str:
    """Version of the installed ``medrega-gateway`` distribution (Software Versions)."""
    try:
        return importlib.metadata.version("medrega-gateway")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - source checkout
        return "0+unknown"


def algorithm_device_uid(algorithm: AlgorithmInfo) -> str:
    """Device UID (0018,1002) of the algorithm: new weights, new device."""
    return derive_uid(
        "algorithm-device", algorithm.backend, algorithm.name, algorithm.version, algorithm.weights_id
    )


def algorithm_equipment(algorithm: AlgorithmInfo, when: datetime.datetime) -> Dataset:
    """The Contributing Equipment item that describes the algorithm (IHE AIR)."""
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [PROCESSING_EQUIPMENT]
    item.Manufacturer = fit(algorithm.manufacturer, LO)
    item.ManufacturerModelName = fit(algorithm.name, LO)
    # The weights are identified by the Device UID and named in the description.
    item.SoftwareVersions = fit(algorithm.version, LO)
    item.DeviceUID = algorithm_device_uid(algorithm)
    item.ContributionDateTime = DT(when)
    kind = "test model (not MedRegA)" if algorithm.is_test_model else "AI model"
    item.ContributionDescription = fit(
        f"{kind} {algorithm.name} {algorithm.version} ({algorithm.backend} backend), "
        f"weights {algorithm.weights_id}: produced the findings and regions of this instance",
        ST,
    )
    return item


def _library_equipment(when: datetime.datetime) -> Dataset:
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [PROCESSING_EQUIPMENT]
    item.Manufacturer = "Highdicom open-source contributors"
    item.ManufacturerModelName = "highdicom"
    item.SoftwareVersions = highdicom.__version__
    item.ContributionDateTime = DT(when)
    item.ContributionDescription = "Software library used to create this instance"
    return item


def contributing_equipment(
    algorithm: AlgorithmInfo, when: datetime.datetime, source: Dataset | None
) -> list[Dataset]:
    """Contributing Equipment Sequence: acquisition device (if known), algorithm, library."""
    items: list[Dataset] = []
    if source is not None and source.get("Manufacturer"):
        acquisition = Dataset()
        acquisition.PurposeOfReferenceCodeSequence = [
            highdicom.sr.CodedConcept("109101", "DCM", "Acquisition Equipment")
        ]
        acquisition.Manufacturer = source.Manufacturer
        for keyword in ("ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber", "InstitutionName"):
            if source.get(keyword):
                acquisition[keyword] = source[keyword]
        items.append(acquisition)
    items.append(algorithm_equipment(algorithm, when))
    items.append(_library_equipment(when))
    return items


#: Patient/study attributes highdicom reads from the source; Type 2 (may be empty, must be
#: present) in the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1).
_TYPE2_DEFAULTS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def with_type2_defaults(source: Dataset) -> Dataset:
    """``source`` (shallow copy) with missing Type 2 patient/study attributes present and empty.

    PACS sometimes omit them; copying an absent attribute would fail, and our object must
    carry them (empty means unknown).
    """
    copy = Dataset(source)
    for keyword in _TYPE2_DEFAULTS:
        if keyword not in copy:
            setattr(copy, keyword, None)
    return copy


def _recode_person_names(dataset: Dataset) -> None:
    """Drop the source's byte encoding of PN values so they are written in UTF-8."""
    for element in dataset:
        if element.VR == "PN" and element.value not in (None, ""):
            if element.VM > 1:
                element.value = [PersonName(str(v)) for v in element.value]
            else:
                element.value = PersonName(str(element.value))
        elif element.VR == "SQ":
            for item in element.value:
                _recode_person_names(item)


def finalize_header(dataset: Dataset, when: datetime.datetime) -> None:
    """Make the header deterministic and UTF-8: dates from ``when``, PN re-encoded.

    Instance Creation, Series, Content and Presentation Creation Date/Time (those the
    object has) are the time the results were produced (``when``), so a retry writes the
    same bytes; highdicom would have used the wall clock.
    """
    date, time = DA(when.date()), TM(when.time().replace(tzinfo=None))
    dataset.SpecificCharacterSet = CHARACTER_SET
    dataset.InstanceCreationDate, dataset.InstanceCreationTime = date, time
    dataset.SeriesDate, dataset.SeriesTime = date, time
    if "ContentDate" in dataset:
        dataset.ContentDate, dataset.ContentTime = date, time
    if "PresentationCreationDate" in dataset:
        dataset.PresentationCreationDate, dataset.PresentationCreationTime = date, time
    if when.tzinfo is not None and when.utcoffset() is not None:
        dataset.TimezoneOffsetFromUTC = when.strftime("%z")  # PS3.3 C.12.1.1.8
    _recode_person_names(dataset)
