"""Which images (and frames) of a study go to the model.

* Objects without an image to look at are skipped: only SOP classes whose name in pydicom's UID
  registry is "... Image Storage" and not "For Processing" (PS3.4 B.5), i.e. no SR, PR, KO, SEG,
  RT, waveform or encapsulated document; a private class is taken when it has Rows/Columns and
  an image modality.
* Projection images (CR, DX, MG, IO, PX, US, XA, RF, ophthalmic, dermoscopy, microscopy, SC...)
  go one by one; a multi-frame one (a cine loop, an XA run) gives its middle frame.
* CT and MR volumes give ``slices_per_volume`` slices spread evenly along the slice normal: each
  slice's position is Image Position (Patient) projected on the normal (the cross product of the
  two Image Orientation (Patient) direction cosines, PS3.3 C.7.6.2.1.1), never Instance Number,
  which scanners number in either direction. Slices in another orientation than the series'
  main one (localizers) are left out. Without geometry the order falls back to Instance Number
  and the reason says so. An enhanced (multi-frame) volume gives frames spread over its frames.
* At most ``max_images_per_study`` choices, taken round-robin over the series so every series
  gets its first choice before any gets a second.

Every choice carries a human-readable ``reason``, recorded with the model run.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydicom.uid import UID

if TYPE_CHECKING:  # pragma: no cover
    from common.settings import ModelSettings

__all__ = ["SourceImage", "ImageChoice", "VOLUME_MODALITIES", "is_image", "slice_positions", "select_images"]

VOLUME_MODALITIES = frozenset({"CT", "MR"})
IMAGE_MODALITIES = frozenset(
    {"CR", "DX", "MG", "IO", "PX", "US", "XA", "RF", "OP", "OPT", "XC", "GM", "SM", "ES", "OT", "CT", "MR", "NM", "PT", "DG", "BDUS", "IVUS", "OCT"}
)
_NON_IMAGE_MODALITIES = frozenset({"SR", "PR", "KO", "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "REG", "DOC", "ECG", "HD", "AU", "FID"})


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


@dataclass(frozen=True)
class ImageChoice:
    image: SourceImage
    #: 1-based frame of a multi-frame object, None for single-frame objects.
    frame_number: int | None
    reason: str


def is_image(image: SourceImage) -> bool:
    """Whether the instance holds a picture the model can look at."""
    modality = (image.modality or "").upper()
    if modality in _NON_IMAGE_MODALITIES or not image.rows or not image.columns:
        return False
    name = UID(image.sop_class_uid).name if image.sop_class_uid else ""
    if name and name != image.sop_class_uid:  # a registered class
        return "Image Storage" in name and "For Processing" not in name
    return modality in IMAGE_MODALITIES


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


def _volume(series: list[SourceImage], k: int) -> list[ImageChoice]:
    if len(series) == 1 and (series[0].number_of_frames or 1) > 1:
        image = series[0]
        n = int(image.number_of_frames or 1)
        return [
            ImageChoice(image, i + 1, f"{image.modality} multi-frame volume: frame {i + 1} of {n}, spread over the frames ({k} per volume)")
            for i in _spread(n, k)
        ]
    # Keep the series' main orientation (localizers in other planes are left out).
    groups: dict[tuple[float, ...] | None, list[SourceImage]] = {}
    for image in series:
        groups.setdefault(_orientation_key(image), []).append(image)
    main = max(groups.values(), key=len)
    left_out = len(series) - len(main)
    positions = slice_positions(main)
    if positions is not None:
        order = sorted(range(len(main)), key=lambda i: (positions[i], main[i].instance_number or 0))
        how = "position along the slice normal (Image Orientation x Image Position)"
    else:
        order = sorted(range(len(main)), key=lambda i: (main[i].instance_number is None, main[i].instance_number or 0, main[i].sop_instance_uid))
        how = "Instance Number (no Image Position/Orientation)"
    note = f"; {left_out} slice(s) in another orientation left out" if left_out else ""
    chosen = _spread(len(order), k)
    out = []
    for rank in chosen:
        image = main[order[rank]]
        where = f" at {positions[order[rank]]:.1f} mm" if positions is not None else ""
        out.append(
            ImageChoice(
                image,
                1 if (image.number_of_frames or 1) > 1 else None,
                f"{image.modality} volume: slice {rank + 1} of {len(order)}{where}, ordered by {how}, "
                f"{len(chosen)} spread over the volume{note}",
            )
        )
    return out


def _projection(image: SourceImage) -> ImageChoice:
    n = int(image.number_of_frames or 1)
    modality = image.modality or "image"
    if n > 1:
        middle = n // 2 + 1
        return ImageChoice(image, middle, f"{modality} multi-frame image: middle frame {middle} of {n}")
    return ImageChoice(image, None, f"{modality} image")


def select_images(images: Sequence[SourceImage], settings: "ModelSettings") -> list[ImageChoice]:
    """Choose the images and frames of one study to send to the model (see the module doc)."""
    series: "OrderedDict[str, list[SourceImage]]" = OrderedDict()
    for image in images:
        if is_image(image):
            series.setdefault(image.series_instance_uid, []).append(image)
    per_series: list[list[ImageChoice]] = []
    for members in series.values():
        modality = (members[0].modality or "").upper()
        if modality in VOLUME_MODALITIES and (len(members) > 2 or (members[0].number_of_frames or 1) > 1):
            per_series.append(_volume(members, settings.slices_per_volume))
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
    return [c for s, choices in enumerate(per_series) for i, c in enumerate(choices) if i in taken[s]]
