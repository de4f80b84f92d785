"""Which images (and frames) of a study go to the model, and why the others do not.

DICOM semantics first (each rule can be turned off in ``settings.model``; every decision is a
:class:`Decision` with a human-readable reason that the worker records in ``image_selections``):

* Objects without an image to look at are excluded: only SOP classes whose name in pydicom's UID
  registry is "... Image Storage" and not "For Processing" (PS3.4 B.5), i.e. no SR, PR, KO, SEG,
  RT, waveform or encapsulated document; a private class is taken when it has Rows/Columns and
  an image modality.
* ``exclude_secondary_capture``: Secondary Capture images (PS3.3 A.8: screen captures, CT dose
  sheets, scanned documents) are not acquired images.
* ``exclude_burned_in_annotation``: Burned In Annotation (0028,0301) YES means identifying text
  is in the pixels (PS3.3 C.7.6.1.1.4).
* ``original_primary_only``: Image Type (0008,0008) values 1 and 2 must be ORIGINAL and PRIMARY
  (PS3.3 C.7.6.1.1.2); DERIVED or SECONDARY images (reformats, MIPs, screenshots) are excluded.
  An image without Image Type is kept and the reason says so.
* ``exclude_localizers``: Image Type value 3 LOCALIZER (PS3.3 C.8.2.1.1.1 CT, C.8.3.1.1.1 MR),
  and CT/MR series of fewer than ``min_volume_slices`` single-frame images (scouts, stray
  slices: no volume to sample).
* Projection radiographs get a view (:func:`view_of`): View Position (0018,5101) AP/PA is
  frontal, LL/RL lateral; without it Patient Orientation (0020,0020): a row direction along L/R
  is frontal, along A/P lateral. The plan is chosen by view (a lateral chest film is not given
  the frontal report prompt).

Then, as before:

* Projection images (CR, DX, MG, IO, PX, US, XA, RF, ophthalmic, dermoscopy, microscopy...)
  go one by one; a multi-frame one (a cine loop, an XA run) gives its middle frame.
* CT and MR volumes give ``slices_per_volume`` slices spread evenly along the slice normal: each
  slice's position is Image Position (Patient) projected on the normal (the cross product of the
  two Image Orientation (Patient) direction cosines, PS3.3 C.7.6.2.1.1), never Instance Number,
  which scanners number in either direction. Slices in another orientation than the series'
  main one (localizers) are left out. Without geometry the order falls back to Instance Number
  and the reason says so. An enhanced (multi-frame) volume gives frames spread over its frames.
* At most ``max_images_per_study`` choices, taken round-robin over the series so every series
  gets its first choice before any gets a second.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

if TYPE_CHECKING:  # pragma: no cover
    from common.settings import ModelSettings

__all__ = [
    "SourceImage",
    "ImageChoice",
    "Decision",
    "Selection",
    "VOLUME_MODALITIES",
    "HEADER_KEYWORDS",
    "is_image",
    "read_header_attributes",
    "view_of",
    "slice_positions",
    "select",
    "select_images",
]

VOLUME_MODALITIES = frozenset({"CT", "MR"})
IMAGE_MODALITIES = frozenset(
    {"CR", "DX", "MG", "IO", "PX", "US", "XA", "RF", "OP", "OPT", "XC", "GM", "SM", "ES", "OT", "CT", "MR", "NM", "PT", "DG", "BDUS", "IVUS", "OCT", "DMS"}
)
_NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "ECG", "HD", "AU", "FID"})
#: Projection modalities whose view (frontal/lateral) chooses the plan.
PROJECTION_RADIOGRAPHY = frozenset({"CR", "DX", "RG", "PX"})
#: View Position (0018,5101) values, PS3.3 C.8.11.5.1.1 (DX Positioning) and C.8.1.1 (CR).
_FRONTAL_VIEWS = frozenset({"AP", "PA"})
_LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT"})
#: Multi-valued attributes are written with DICOM's separator (PS3.5 6.4).
_BACKSLASH = "\\"
#: What selection reads from each header beyond the database row (keywords, PS3.6).
HEADER_KEYWORDS = ("ImageType", "BurnedInAnnotation", "ViewPosition", "ImageLaterality",
                   "PatientOrientation", "SeriesDescription", "ConversionType")


@dataclass(frozen=True)
class SourceImage:
    """One received instance, from the database row and the spool path."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    modality: str | None
    body_part_examined: str | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    instance_number: int | None
    image_position_patient: list[float] | None
    image_orientation_patient: list[float] | None
    #: Series Number (0020,0011) of the instance's series; orders regions across series.
    series_number: int | None = None
    #: The header attributes of :data:`HEADER_KEYWORDS` (read from the file when None).
    image_type: tuple[str, ...] | None = None
    burned_in_annotation: str | None = None
    view_position: str | None = None
    image_laterality: str | None = None
    patient_orientation: tuple[str, ...] | None = None
    series_description: str | None = None
    header_read: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class ImageChoice:
    image: SourceImage
    #: 1-based frame of a multi-frame object, None for single-frame objects.
    frame_number: int | None
    reason: str
    #: "frontal", "lateral", "other" for projection radiographs; None otherwise.
    view: str | None = None


@dataclass(frozen=True)
class Decision:
    """An image (or the unchosen slices of a series) left out, with the reason."""

    series_instance_uid: str
    #: The instance; None for a series-level note ("497 of 500 slices not sent").
    image: SourceImage | None
    reason: str


@dataclass(frozen=True)
class Selection:
    chosen: list[ImageChoice]
    excluded: list[Decision]


def _multi(value: object) -> tuple[str, ...] | None:
    if value is None or value == "":
        return None
    values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return tuple(str(v).strip().upper() for v in values)


def read_header_attributes(image: SourceImage) -> SourceImage:
    """``image`` with the attributes of :data:`HEADER_KEYWORDS` read from its file (no pixels)."""
    if image.header_read:
        return image
    try:
        ds = pydicom.dcmread(str(image.path), stop_before_pixels=True, specific_tags=list(HEADER_KEYWORDS))
    except (InvalidDicomError, OSError):
        return replace(image, header_read=True)  # prepare_image reports the unreadable file

    def text(keyword: str) -> str | None:
        value = ds.get(keyword)
        return str(value).strip() or None if value not in (None, "") else None

    return replace(
        image,
        image_type=_multi(ds.get("ImageType")),
        burned_in_annotation=(text("BurnedInAnnotation") or "").upper() or None,
        view_position=(text("ViewPosition") or "").upper() or None,
        image_laterality=(text("ImageLaterality") or "").upper() or None,
        patient_orientation=_multi(ds.get("PatientOrientation")),
        series_description=text("SeriesDescription"),
        header_read=True,
    )


def is_image(image: SourceImage) -> bool:
    """Whether the instance holds a picture the model can look at."""
    modality = (image.modality or "").upper()
    if modality in _NON_IMAGE_MODALITIES or not image.rows or not image.columns:
        return False
    name = UID(image.sop_class_uid).name if image.sop_class_uid else ""
    if name and name != image.sop_class_uid:  # a registered class
        return "Image Storage" in name and "For Processing" not in name
    return modality in IMAGE_MODALITIES


def _is_secondary_capture(image: SourceImage) -> bool:
    name = UID(image.sop_class_uid).name if image.sop_class_uid else ""
    return "Secondary Capture" in name


def view_of(image: SourceImage) -> tuple[str, str]:
    """(view, how it was decided) of a projection radiograph: frontal, lateral or other."""
    position = image.view_position
    if position:
        if position in _FRONTAL_VIEWS:
            return "frontal", f"View Position {position}"
        if position in _LATERAL_VIEWS:
            return "lateral", f"View Position {position}"
        return "other", f"View Position {position} (neither frontal nor lateral)"
    orientation = image.patient_orientation
    if orientation and len(orientation) == 2 and orientation[0]:
        row = orientation[0]
        if set(row) <= {"L", "R"} and set(row):
            return "frontal", f"Patient Orientation {_BACKSLASH.join(orientation)} (rows run left-right)"
        if set(row) <= {"A", "P"} and set(row):
            return "lateral", f"Patient Orientation {_BACKSLASH.join(orientation)} (rows run anterior-posterior)"
        return "other", f"Patient Orientation {_BACKSLASH.join(orientation)}"
    return "frontal", "no View Position or Patient Orientation: taken as frontal"


def _exclusion(image: SourceImage, settings: "ModelSettings") -> str | None:
    """Why ``image`` must not go to the model (None: it may)."""
    if not is_image(image):
        name = UID(image.sop_class_uid).name if image.sop_class_uid else "no SOP Class"
        return f"not an image the model can read ({image.modality or 'no modality'}, {name})"
    if settings.exclude_secondary_capture and _is_secondary_capture(image):
        return (f"Secondary Capture ({UID(image.sop_class_uid).name}): a screen capture or dose sheet, "
                "not an acquired image (model.exclude_secondary_capture)")
    if settings.exclude_burned_in_annotation and image.burned_in_annotation == "YES":
        return "Burned In Annotation YES: text in the pixels (model.exclude_burned_in_annotation)"
    image_type = image.image_type or ()
    if settings.exclude_localizers and len(image_type) > 2 and "LOCALIZER" in image_type[2:]:
        return f"localizer (Image Type {_BACKSLASH.join(image_type)}) (model.exclude_localizers)"
    if settings.original_primary_only and image_type[:2] and tuple(image_type[:2]) != ("ORIGINAL", "PRIMARY"):
        return (f"Image Type {_BACKSLASH.join(image_type)}: not an ORIGINAL/PRIMARY image "
                "(model.original_primary_only)")
    return None


def slice_positions(images: Sequence[SourceImage]) -> list[float] | None:
    """Positions along the slice normal, or None when some slice lacks geometry."""
    out: list[float] = []
    for image in images:
        iop, ipp = image.image_orientation_patient, image.image_position_patient
        if not iop or not ipp or len(iop) != 6 or len(ipp) != 3:
            return None
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        out.append(float(np.dot(normal, np.asarray(ipp, float))))
    return out


def _spread(n: int, k: int) -> list[int]:
    """k indices of n, at the centres of k equal parts (no duplicates, never both ends)."""
    if k >= n:
        return list(range(n))
    return sorted({int((j + 0.5) * n / k) for j in range(k)})


def _orientation_key(image: SourceImage) -> tuple[float, ...] | None:
    iop = image.image_orientation_patient
    return tuple(round(float(v), 2) for v in iop) if iop and len(iop) == 6 else None


def _volume(series: list[SourceImage], k: int) -> tuple[list[ImageChoice], list[Decision]]:
    uid = series[0].series_instance_uid
    if len(series) == 1 and (series[0].number_of_frames or 1) > 1:
        image = series[0]
        n = int(image.number_of_frames or 1)
        chosen = [
            ImageChoice(image, i + 1, f"{image.modality} multi-frame volume: frame {i + 1} of {n}, spread over the frames ({k} per volume)")
            for i in _spread(n, k)
        ]
        notes = [Decision(uid, image, f"{n - len(chosen)} of {n} frames not sent ({len(chosen)} spread over the volume)")] if n > len(chosen) else []
        return chosen, notes
    # Keep the series' main orientation (localizers in other planes are left out).
    groups: dict[tuple[float, ...] | None, list[SourceImage]] = {}
    for image in series:
        groups.setdefault(_orientation_key(image), []).append(image)
    main = max(groups.values(), key=len)
    notes = [Decision(uid, image, f"{image.modality} slice in another orientation than the series' main one (a localizer)")
             for image in series if _orientation_key(image) != _orientation_key(main[0])]
    positions = slice_positions(main)
    if positions is not None:
        order = sorted(range(len(main)), key=lambda i: (positions[i], main[i].instance_number or 0))
        how = "position along the slice normal (Image Orientation x Image Position)"
    else:
        order = sorted(range(len(main)), key=lambda i: (main[i].instance_number is None, main[i].instance_number or 0, main[i].sop_instance_uid))
        how = "Instance Number (no Image Position/Orientation)"
    chosen_ranks = _spread(len(order), k)
    out = []
    for rank in chosen_ranks:
        image = main[order[rank]]
        where = f" at {positions[order[rank]]:.1f} mm" if positions is not None else ""
        out.append(
            ImageChoice(
                image,
                1 if (image.number_of_frames or 1) > 1 else None,
                f"{image.modality} volume: slice {rank + 1} of {len(order)}{where}, ordered by {how}, "
                f"{len(chosen_ranks)} spread over the volume",
            )
        )
    if len(order) > len(chosen_ranks):
        notes.append(Decision(uid, None, f"{len(order) - len(chosen_ranks)} of {len(order)} slices not sent "
                                         f"({len(chosen_ranks)} spread over the volume, model.slices_per_volume)"))
    return out, notes


def _projection(image: SourceImage) -> ImageChoice:
    n = int(image.number_of_frames or 1)
    modality = image.modality or "image"
    view: str | None = None
    described = f"{modality} image"
    if modality.upper() in PROJECTION_RADIOGRAPHY:
        view, how = view_of(image)
        described = f"{modality} {view} view ({how})"
    if image.image_laterality:
        described += f", Image Laterality {image.image_laterality}"
    if n > 1:
        middle = n // 2 + 1
        return ImageChoice(image, middle, f"{described}: middle frame {middle} of {n}", view)
    return ImageChoice(image, None, described, view)


def select(images: Sequence[SourceImage], settings: "ModelSettings") -> Selection:
    """Choose the images and frames of one study to send to the model (see the module doc)."""
    excluded: list[Decision] = []
    series: "OrderedDict[str, list[SourceImage]]" = OrderedDict()
    for image in images:
        image = read_header_attributes(image)
        why = _exclusion(image, settings)
        if why is not None:
            excluded.append(Decision(image.series_instance_uid, image, why))
        else:
            series.setdefault(image.series_instance_uid, []).append(image)
    per_series: list[list[ImageChoice]] = []
    for members in series.values():
        modality = (members[0].modality or "").upper()
        multi_frame = (members[0].number_of_frames or 1) > 1
        if modality in VOLUME_MODALITIES and not multi_frame and settings.exclude_localizers \
                and len(members) < settings.min_volume_slices:
            excluded.extend(
                Decision(m.series_instance_uid, m,
                         f"{modality} series of {len(members)} image(s): fewer than model.min_volume_slices = "
                         f"{settings.min_volume_slices}, a scout or stray slices rather than a volume")
                for m in members
            )
            continue
        if modality in VOLUME_MODALITIES:
            chosen, notes = _volume(members, settings.slices_per_volume)
            per_series.append(chosen)
            excluded.extend(notes)
        else:
            ordered = sorted(members, key=lambda m: (m.instance_number is None, m.instance_number or 0, m.sop_instance_uid))
            per_series.append([_projection(m) for m in ordered])
    # Bounded work: round-robin over the series.
    limit = settings.max_images_per_study
    taken: list[set[int]] = [set() for _ in per_series]
    count, depth = 0, 0
    while count < limit and any(depth < len(c) for c in per_series):
        for s, choices in enumerate(per_series):
            if depth < len(choices) and count < limit:
                taken[s].add(depth)
                count += 1
        depth += 1
    chosen_all: list[ImageChoice] = []
    for s, choices in enumerate(per_series):
        for i, choice in enumerate(choices):
            if i in taken[s]:
                chosen_all.append(choice)
            else:
                excluded.append(Decision(choice.image.series_instance_uid, choice.image,
                                         f"over model.max_images_per_study = {limit} ({choice.reason})"))
    return Selection(chosen=chosen_all, excluded=excluded)


def select_images(images: Sequence[SourceImage], settings: "ModelSettings") -> list[ImageChoice]:
    """The chosen images and frames only (see :func:`select`)."""
    return select(images, settings).chosen
