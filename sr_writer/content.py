"""The input contract of :mod:`sr_writer`: what the worker hands over for one SR.

The worker builds these from database rows (``common.models.Finding``) and calls
:func:`sr_writer.report.build_sr` once per language and study version.
:func:`validate_content` checks the parts the DICOM encoding depends on, so that a broken
input fails loudly here instead of producing an SR that points at the wrong pixels.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pydicom

from common.uids import valid_uid
from model.imaging import CT_PRESETS

from .errors import InvalidContentError

_in_iod: Callable[[str, str], bool] | None
try:  # highdicom's table of attributes per IOD (pinned version; private module)
    from highdicom._standard_utils import is_attribute_in_iod

    _in_iod = is_attribute_in_iod
except ImportError:  # pragma: no cover - a highdicom without it: decide from the header alone
    _in_iod = None

__all__ = [
    "AlgorithmInfo",
    "RegionFinding",
    "ImageFinding",
    "Note",
    "ReportContent",
    "LANGUAGES",
    "validate_content",
    "is_multiframe",
    "frame_count",
    "referenced_frame",
    "evidence_by_sop_uid",
    "Source",
    "normalized_text",
    "result_key",
    "group_identical",
]

#: An image a result was read from: (SOP Class UID, SOP Instance UID, frame number or None).
Source = tuple[str, str, int | None]

_T = TypeVar("_T")

#: Languages an SR can be written in (RFC 5646 primary subtags).
LANGUAGES: tuple[str, ...] = ("en", "zh")

@dataclass(frozen=True)
class AlgorithmInfo:
    """What produced the results (from ``model.backends.base.ModelIdentity``)."""

    backend: str
    name: str
    version: str
    #: Digest over the checkpoint files; the Device UID is derived from it.
    weights_id: str
    manufacturer: str
    #: tiny/replay backends: titles and descriptions say "test" and never claim MedRegA.
    is_test_model: bool


@dataclass(frozen=True)
class RegionFinding:
    """One box the model named, in pixel coordinates of one image (and frame)."""

    tracking_uid: str
    tracking_identifier: str
    label: str
    description: str | None
    #: (value, scheme designator, meaning) if the worker already coded it, else looked up.
    code: tuple[str, str, str] | None
    referenced_sop_class_uid: str
    referenced_sop_instance_uid: str
    #: 1-based frame for multi-frame images; ``None`` for single-frame images.
    frame_number: int | None
    #: x1, y1, x2, y2 in image pixel coordinates (column, row), PS3.3 C.10.5.1.2.
    pixels: tuple[float, float, float, float]
    #: (row spacing, column spacing) in mm, as Pixel Spacing (0028,0030); ``None`` if unknown.
    pixel_spacing: tuple[float, float] | None
    #: The language of ``description`` when it is not the document's (a task trained in one
    #: language only); the Comment then carries its own TID 1204 Language of Content Item.
    description_language: str | None = None
    #: The CT window preset (:data:`model.imaging.CT_PRESETS`) the model's input was rendered
    #: with when the box was found (``ModelRun.window``); ``None``: the header's or default window.
    window: str | None = None


@dataclass(frozen=True)
class ImageFinding:
    """A coded finding about a whole image (a classification answer mapped to a trained option)."""

    #: (Code Value, Coding Scheme Designator, Code Meaning in the document's language).
    code: tuple[str, str, str]
    #: The image it was inferred from: (SOP Class UID, SOP Instance UID, frame or None).
    source: tuple[str, str, int | None]
    #: The task and training set (or prompt) that answered, e.g. "classification (chexpert_train_cls)":
    #: the same code from the same task on several images of a series is one content item.
    task: str | None = None


@dataclass(frozen=True)
class Note:
    """A remark about the results that is not a finding (a cut-off answer, a sentence left out)."""

    #: "truncated" | "prior_study" | "deid_blank" | "unmapped" (sr_writer.wording words each).
    kind: str
    #: The task and training set concerned, e.g. "report (mimiccxr_train_rg)".
    task: str
    #: The sentence left out, or the answer, as the model wrote it.
    text: str = ""
    #: The language of ``text``.
    text_language: str | None = None


@dataclass(frozen=True)
class ReportContent:
    """Everything one SR (one language, one study version) says."""

    language: str
    #: Headers of ALL analysed instances of the study version; patient/study from [0].
    evidence: Sequence[pydicom.Dataset]
    #: Report text(s) exactly as the model wrote them.
    report_texts: Sequence[str]
    regions: Sequence[RegionFinding]
    algorithm: AlgorithmInfo
    study_version: int
    #: Content Date/Time of the SR; also the source of every other date we write.
    content_datetime: datetime.datetime
    #: (study uid, series uid, sop class uid, sop instance uid) of previous SRs.
    predecessor: Sequence[tuple[str, str, str, str]] = ()
    institution_name: str | None = None
    #: False when some instance of the study version could not be analysed: the SR's
    #: Completion Flag is then PARTIAL (PS3.3 C.17.2.1).
    complete: bool = True
    #: For each report text, the image (SOP Class UID, SOP Instance UID, frame or None) the
    #: model read to write it; empty, or None for a text, when not known. A study of several
    #: images gets one report per image: the reference says which is which.
    report_sources: Sequence[tuple[str, str, int | None] | None] = ()
    #: The installation's UID root (a UUID, ``common.models.Installation``): the SR's and the
    #: presentation states' UIDs derive from it. ``None``: the fixed default (tests, samples).
    uid_root: str | None = None
    #: For each report text, its language when it is not the document's (None or empty: the
    #: document's). A task trained in one language only is reported in that language in both
    #: SRs, and the text says so (TID 1204 on the item).
    report_languages: Sequence[str | None] = ()
    #: Coded findings about whole images (classification), in Qualitative Evaluations.
    image_findings: Sequence[ImageFinding] = ()
    #: Remarks that are not findings (truncation, sentences left out), in Qualitative Evaluations.
    notes: Sequence[Note] = ()
    #: For each report text, the task and training set (or prompt) that wrote it (None or empty:
    #: unknown). Identical texts of one task, language and series are one content item that
    #: references every image they were read from (see :func:`result_key`).
    report_tasks: Sequence[str | None] = ()


def normalized_text(text: str) -> str:
    """``text`` with runs of white space (line breaks included) as one space, trimmed: two answers
    that differ only there say the same thing."""
    return " ".join(text.split())


def result_key(*, text: str | None = None, code: tuple[str, str, str] | None = None, task: str | None,
               language: str | None, series_instance_uid: str | None) -> tuple[Hashable, ...]:
    """What makes two image-level results (a report text or a coded finding about a whole image)
    one: the same text after :func:`normalized_text`, or the same code (value and scheme; the
    meaning is wording); from the same task (training set or prompt), in the same language, read
    from images of the same series (Series Instance UID, PS3.3 C.7.3.1).

    Such results are written once, with a reference to every image they were read from (PS3.3
    C.17.3: several INFERRED FROM IMAGE children of one item), and listed once on the study page.
    Regions (boxes) are never merged: each box is on its own image.
    """
    if code is not None:
        what: tuple[str, ...] = ("code", code[0], code[1])
    elif text is not None:
        what = ("text", normalized_text(text))
    else:
        raise ValueError("a result key needs a text or a code")
    return (*what, task, language, series_instance_uid)


def group_identical(items: Iterable[_T], key: Callable[[_T], Hashable]) -> list[list[_T]]:
    """``items`` in groups of equal ``key``, each group where its first item was, items in order."""
    groups: dict[Hashable, list[_T]] = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return list(groups.values())


def is_multiframe(dataset: pydicom.Dataset) -> bool:
    """Whether frames of this image are referenced by number (PS3.3 C.7.6.6).

    True for SOP Classes whose IOD has the Multi-frame Module, and for any image that
    declares more than one frame. A single-frame class carrying Number of Frames = 1 (seen
    in Secondary Capture files) is not multi-frame: its frames cannot be referenced.
    """
    frames = dataset.get("NumberOfFrames")
    if frames is not None and int(frames) > 1:
        return True
    if _in_iod is None or not dataset.get("SOPClassUID"):
        return frames is not None
    return bool(_in_iod("NumberOfFrames", str(dataset.SOPClassUID)))


def frame_count(dataset: pydicom.Dataset) -> int:
    """Number of frames of an image (1 when Number of Frames is absent)."""
    frames = dataset.get("NumberOfFrames")
    return int(frames) if frames not in (None, "") else 1


def referenced_frame(image: pydicom.Dataset, frame_number: int | None) -> int | None:
    """The frame number to reference for ``image``: ``None`` for single-frame images.

    For a multi-frame image with exactly one frame, a missing number means frame 1.
    """
    if not is_multiframe(image):
        return None
    if frame_number is None and frame_count(image) == 1:
        return 1
    return frame_number


def evidence_by_sop_uid(content: ReportContent) -> dict[str, pydicom.Dataset]:
    """Evidence headers keyed by SOP Instance UID."""
    return {str(ds.SOPInstanceUID): ds for ds in content.evidence}


def _check_uid(value: str, what: str) -> None:
    if not valid_uid(value):
        raise InvalidContentError(f"{what} is not a valid DICOM UID: {value!r}")


def validate_content(content: ReportContent) -> None:
    """Raise :class:`InvalidContentError` if ``content`` cannot be encoded faithfully.

    Checks: known language; non-empty evidence from one study with the attributes the
    Patient/Study modules need; version >= 1; every region references an evidence instance
    (same SOP Class), a frame that exists (required for multi-frame images, absent
    otherwise), an ordered box inside the image, and a Tracking UID unique in the document.
    """
    if content.language not in LANGUAGES:
        raise InvalidContentError(f"language must be one of {LANGUAGES}, not {content.language!r}")
    if not content.evidence:
        raise InvalidContentError("evidence is empty: an SR must reference the analysed instances")
    if isinstance(content.report_texts, str):
        raise InvalidContentError("report_texts must be a sequence of strings, not one string")
    if content.report_sources and len(content.report_sources) != len(content.report_texts):
        raise InvalidContentError("report_sources must have one entry per report text (or be empty)")
    if content.report_languages and len(content.report_languages) != len(content.report_texts):
        raise InvalidContentError("report_languages must have one entry per report text (or be empty)")
    if content.report_tasks and len(content.report_tasks) != len(content.report_texts):
        raise InvalidContentError("report_tasks must have one entry per report text (or be empty)")
    for other in [*content.report_languages, *(r.description_language for r in content.regions),
                  *(n.text_language for n in content.notes)]:
        if other is not None and other not in LANGUAGES:
            raise InvalidContentError(f"a text's language must be one of {LANGUAGES}, not {other!r}")
    for finding in content.image_findings:
        if len(finding.code) != 3 or not all(finding.code):
            raise InvalidContentError("an image finding's code must be (value, scheme, meaning)")
        if finding.source[1] not in {str(ds.SOPInstanceUID) for ds in content.evidence}:
            raise InvalidContentError(f"an image finding references {finding.source[1]}, which is not in evidence")
    if not isinstance(content.study_version, int) or content.study_version < 1:
        raise InvalidContentError(f"study_version must be an integer >= 1, not {content.study_version!r}")
    if not isinstance(content.content_datetime, datetime.datetime):
        raise InvalidContentError("content_datetime must be a datetime.datetime")
    study_uid = content.evidence[0].get("StudyInstanceUID")
    if not study_uid:
        raise InvalidContentError("evidence[0] has no Study Instance UID")
    for ds in content.evidence:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
            if not ds.get(keyword):
                raise InvalidContentError(f"an evidence header lacks {keyword}")
        if ds.StudyInstanceUID != study_uid:
            raise InvalidContentError(
                f"evidence mixes studies: {ds.SOPInstanceUID} is in study {ds.StudyInstanceUID}, "
                f"not {study_uid}"
            )
    for entry in content.predecessor:
        if len(entry) != 4:
            raise InvalidContentError("predecessor entries are (study, series, class, instance) UIDs")
        for uid in entry:
            _check_uid(uid, "predecessor UID")

    evidence = evidence_by_sop_uid(content)
    seen_tracking: set[str] = set()
    for region in content.regions:
        where = f"region {region.tracking_identifier!r}"
        _check_uid(region.tracking_uid, f"{where}: Tracking UID")
        if region.tracking_uid in seen_tracking:
            raise InvalidContentError(
                f"{where}: Tracking UID {region.tracking_uid} is used by two regions; "
                "each box is one ROI (PS3.16 TID 1410) and needs its own Tracking UID"
            )
        seen_tracking.add(region.tracking_uid)
        if not region.tracking_identifier:
            raise InvalidContentError(f"{where}: empty Tracking Identifier")
        if not region.label or not region.label.strip():
            raise InvalidContentError(f"{where}: empty label")
        if region.code is not None and (len(region.code) != 3 or not all(region.code)):
            raise InvalidContentError(f"{where}: code must be (value, scheme, meaning)")
        if region.window is not None and region.window not in CT_PRESETS:
            raise InvalidContentError(f"{where}: unknown CT window {region.window!r}; known: {sorted(CT_PRESETS)}")
        image = evidence.get(region.referenced_sop_instance_uid)
        if image is None:
            raise InvalidContentError(
                f"{where}: references {region.referenced_sop_instance_uid}, which is not in evidence"
            )
        if str(image.SOPClassUID) != region.referenced_sop_class_uid:
            raise InvalidContentError(
                f"{where}: SOP Class {region.referenced_sop_class_uid} differs from the "
                f"evidence's {image.SOPClassUID}"
            )
        frames = frame_count(image) if is_multiframe(image) else None
        if frames is not None:
            frame = referenced_frame(image, region.frame_number)
            if frame is None:
                raise InvalidContentError(f"{where}: the image has {frames} frames; frame_number is required")
            if not 1 <= frame <= frames:
                raise InvalidContentError(f"{where}: frame {frame} not in 1..{frames}")
        elif region.frame_number not in (None, 1):
            raise InvalidContentError(f"{where}: frame {region.frame_number} of a single-frame image")
        if len(region.pixels) != 4:
            raise InvalidContentError(f"{where}: pixels must be (x1, y1, x2, y2)")
        x1, y1, x2, y2 = (float(v) for v in region.pixels)
        if not (0 <= x1 <= x2 and 0 <= y1 <= y2):
            raise InvalidContentError(f"{where}: box {region.pixels} is not ordered and non-negative")
        columns, rows = image.get("Columns"), image.get("Rows")
        if columns is not None and rows is not None and (x2 > columns or y2 > rows):
            raise InvalidContentError(f"{where}: box {region.pixels} exceeds the {columns}x{rows} image")
        if region.pixel_spacing is not None:
            if len(region.pixel_spacing) != 2 or min(region.pixel_spacing) <= 0:
                raise InvalidContentError(f"{where}: pixel_spacing must be two positive numbers")
