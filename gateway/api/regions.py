"""Pair a study's findings across languages: one region, its English and Chinese names side by side.

The model is asked once per language, so the same region appears as one finding per language.
Two findings on the same image (and frame) found on the same CT window are the same region when
they carry the same code, or else when their boxes overlap almost entirely (IoU >= 0.8). Whatever
does not pair stays alone. Each region keeps the window it was found on, so it is drawn on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .schemas import FindingOut

__all__ = ["Region", "ImageRegions", "language_group", "pair_regions"]

_SAME_BOX_IOU = 0.8


def language_group(language: str) -> str:
    """``zh``, ``zh-CN``, ``zh_Hans`` -> ``zh``; everything else by its primary subtag."""
    return language.replace("_", "-").split("-")[0].lower() or "und"


@dataclass
class Region:
    number: int
    box_px: list[float] | None
    #: The CT window preset of the model run that found it (None: the image's own window).
    window: str | None = None
    by_language: dict[str, FindingOut] = field(default_factory=dict)

    def label(self, language: str) -> str:
        f = self.by_language.get(language)
        if f is None:
            return ""
        return f.label or f.code_meaning or (f.text or "")[:80]


@dataclass
class ImageRegions:
    sop_instance_uid: str
    frame_number: int | None
    regions: list[Region]


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _same(region: Region, f: FindingOut) -> bool:
    if language_group(f.language) in region.by_language or f.window != region.window:
        return False
    other = next(iter(region.by_language.values()))
    if f.code_value and other.code_value:
        return (f.code_value, f.code_scheme) == (other.code_value, other.code_scheme)
    if f.box_px and region.box_px:
        return _iou(f.box_px, region.box_px) >= _SAME_BOX_IOU
    return False


def pair_regions(findings: Iterable[FindingOut]) -> list[ImageRegions]:
    """Findings grouped per image (and frame), regions numbered from 1 across the study."""
    groups: dict[tuple[str, int | None], list[FindingOut]] = defaultdict(list)
    for f in sorted(findings, key=lambda f: f.id):
        groups[(f.sop_instance_uid or "", f.frame_number)].append(f)
    out: list[ImageRegions] = []
    number = 0
    for (sop, frame), items in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        regions: list[Region] = []
        for f in items:
            if f.box_px is None:  # about the whole image: listed once per result (study_image_results)
                continue
            match = next((r for r in regions if _same(r, f)), None)
            if match is None:
                number += 1
                match = Region(number=number, box_px=f.box_px, window=f.window)
                regions.append(match)
            match.by_language[language_group(f.language)] = f
        out.append(ImageRegions(sop_instance_uid=sop, frame_number=frame, regions=regions))
    return out
