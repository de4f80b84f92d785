"""Reading our SRs back into plain values (for verification, rendering and fallbacks).

Uses highdicom's TID 1500 parser (:meth:`highdicom.sr.Comprehensive3DSR.from_dataset`) for
the measurement groups, and walks the content tree for the parts highdicom does not expose
(TEXT items, Algorithm Identification, language).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from highdicom.sr import Comprehensive3DSR, ComprehensiveSR, EnhancedSR, MeasurementReport
from highdicom.sr.coding import CodedConcept
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage

from model.imaging import CT_PRESETS

from . import coding
from .errors import NotConvertibleError
from .report import WINDOW_PARAMETER

__all__ = ["ReadRegion", "ReadResult", "ReadReport", "read_report"]

#: keyed by SOP Class UID (pydicom's UIDs are str; a data set's UID is looked up as str)
_READERS: dict[str, type[Comprehensive3DSR] | type[ComprehensiveSR] | type[EnhancedSR]] = {
    Comprehensive3DSRStorage: Comprehensive3DSR,
    ComprehensiveSRStorage: ComprehensiveSR,
    EnhancedSRStorage: EnhancedSR,
}
_LANGUAGE = ("121049", "DCM")
_ALGORITHM_NAME = ("111001", "DCM")
_ALGORITHM_VERSION = ("111003", "DCM")
_ALGORITHM_PARAMETERS = ("111002", "DCM")
_DEVICE_OBSERVER_UID = ("121012", "DCM")


@dataclass(frozen=True)
class ReadRegion:
    """One TID 1410 group as read back."""

    tracking_uid: str
    tracking_identifier: str
    finding: tuple[str, str, str]  # value, scheme, meaning
    graphic_type: str
    points: tuple[tuple[float, float], ...]  # (column, row)
    referenced_sop_class_uid: str
    referenced_sop_instance_uid: str
    frame_numbers: tuple[int, ...]
    measurements: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (value, unit)
    #: The first Comment: the finding's name, as viewers label the box (see sr_writer.report).
    label: str | None = None
    #: The second Comment: the model's description of the region, if it gave one.
    description: str | None = None
    algorithm_name: str | None = None
    algorithm_version: str | None = None
    #: The CT window preset the box was found on (TID 4019 Algorithm Parameters "window: ...",
    #: see :func:`sr_writer.report.window_parameter`); ``None`` when the SR names none.
    window: str | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2) spanned by the points."""
        xs = [p[0] for p in self.points]
        ys = [p[1] for p in self.points]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass(frozen=True)
class ReadResult:
    """One item of Qualitative Evaluations as read back: a Finding (TEXT or CODE) or a Comment,
    with every image it was INFERRED FROM (one item may reference several, see sr_writer.report)."""

    name: tuple[str, str, str]  # concept name: value, scheme, meaning
    #: The TEXT's value; ``None`` for a CODE item.
    text: str | None
    #: The CODE's value, scheme and meaning; ``None`` for a TEXT item.
    code: tuple[str, str, str] | None
    #: (SOP Class UID, SOP Instance UID, frame numbers) of each image it was read from, in order.
    sources: tuple[tuple[str, str, tuple[int, ...]], ...]
    #: Its own Language of Content Item (TID 1204) when it differs from the document's.
    language: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class ReadReport:
    """The parts of one of our SRs that the tests, the renderer and the fallbacks need."""

    sop_class_uid: str
    sop_instance_uid: str
    title: tuple[str, str, str]
    language: tuple[str, str, str] | None
    device_observer_uid: str | None
    procedures: tuple[tuple[str, str, str], ...]
    regions: tuple[ReadRegion, ...]
    texts: tuple[str, ...]
    #: Qualitative Evaluations item by item (codes, texts and notes), with their image references.
    results: tuple[ReadResult, ...] = ()


def _triple(concept: Dataset) -> tuple[str, str, str]:
    return (str(concept.CodeValue), str(concept.CodingSchemeDesignator), str(concept.CodeMeaning))


def _name(item: Dataset) -> tuple[str, str]:
    concept = item.ConceptNameCodeSequence[0]
    return str(concept.CodeValue), str(concept.CodingSchemeDesignator)


def _children(item: Dataset) -> Iterable[Dataset]:
    return item.get("ContentSequence", []) or []


def _text_children(item: Dataset, name: tuple[str, str]) -> list[str]:
    return [str(child.TextValue) for child in _children(item) if child.ValueType == "TEXT" and _name(child) == name]


def _text_child(item: Dataset, name: tuple[str, str]) -> str | None:
    texts = _text_children(item, name)
    return texts[0] if texts else None


def _frame_numbers(reference: Dataset) -> tuple[int, ...]:
    """Referenced Frame Number (0008,1160) of a Referenced SOP Sequence item, () when absent."""
    frames = reference.get("ReferencedFrameNumber")
    if frames is None:
        return ()
    if isinstance(frames, (MultiValue, list, tuple)):
        return tuple(int(f) for f in frames)
    return (int(frames),)


def _result(item: Dataset) -> ReadResult:
    """One Qualitative Evaluations item with the images it was INFERRED FROM."""
    sources = []
    language = None
    for child in _children(item):
        if child.ValueType == "IMAGE" and child.RelationshipType == "INFERRED FROM":
            ref = child.ReferencedSOPSequence[0]
            sources.append((str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID), _frame_numbers(ref)))
        elif child.ValueType == "CODE" and _name(child) == _LANGUAGE:
            language = _triple(child.ConceptCodeSequence[0])
    return ReadResult(
        name=_triple(item.ConceptNameCodeSequence[0]),
        text=str(item.TextValue) if item.ValueType == "TEXT" else None,
        code=_triple(item.ConceptCodeSequence[0]) if item.ValueType == "CODE" else None,
        sources=tuple(sources),
        language=language,
    )


def _window(group: Dataset) -> str | None:
    """The CT window named by the group's Algorithm Parameters (written by sr_writer.report)."""
    for text in _text_children(group, _ALGORITHM_PARAMETERS):
        if text.startswith(WINDOW_PARAMETER):
            name = text[len(WINDOW_PARAMETER):].split(" ", 1)[0]
            if name not in CT_PRESETS:
                raise NotConvertibleError(f"the SR names an unknown CT window {name!r}")
            return name
    return None


def _region(group: Dataset, parsed) -> ReadRegion:
    roi = parsed.roi
    if roi is None:
        raise NotConvertibleError("a measurement group without an image region")
    source = roi.ContentSequence[0].ReferencedSOPSequence[0]
    frame_numbers = _frame_numbers(source)
    measurements = {}
    for measurement in parsed.get_measurements():
        measurements[str(measurement.name.meaning)] = (float(measurement.value), str(measurement.unit.value))
    finding: CodedConcept = parsed.finding_type
    comments = _text_children(group, (coding.COMMENT.value, coding.COMMENT.scheme_designator))
    data = [float(v) for v in roi.GraphicData]
    return ReadRegion(
        tracking_uid=str(parsed.tracking_uid),
        tracking_identifier=str(parsed.tracking_identifier),
        finding=(finding.value, finding.scheme_designator, finding.meaning),
        graphic_type=str(roi.GraphicType),
        points=tuple(zip(data[0::2], data[1::2])),
        referenced_sop_class_uid=str(source.ReferencedSOPClassUID),
        referenced_sop_instance_uid=str(source.ReferencedSOPInstanceUID),
        frame_numbers=frame_numbers,
        measurements=measurements,
        label=comments[0] if comments else None,
        description=comments[1] if len(comments) > 1 else None,
        algorithm_name=_text_child(group, _ALGORITHM_NAME),
        algorithm_version=_text_child(group, _ALGORITHM_VERSION),
        window=_window(group),
    )


def read_report(dataset: Dataset) -> ReadReport:
    """Parse one of our TID 1500 SRs (Comprehensive 3D, Comprehensive or Enhanced SR).

    Raises :class:`NotConvertibleError` if the document is not a TID 1500 Measurement Report.
    """
    template = dataset.get("ContentTemplateSequence")
    if not template or str(template[0].TemplateIdentifier) != "1500":
        raise NotConvertibleError("not a TID 1500 Measurement Report")
    reader = _READERS.get(str(dataset.get("SOPClassUID", "")))
    if reader is None:
        raise NotConvertibleError(f"SOP Class {dataset.get('SOPClassUID')} cannot carry a TID 1500 report")
    sr = reader.from_dataset(dataset, copy=True)
    report = sr.content
    assert isinstance(report, MeasurementReport)
    root = sr
    language = None
    device_uid = None
    procedures = []
    texts: list[str] = []
    results: list[ReadResult] = []
    for item in _children(root):
        name = _name(item)
        if name == _LANGUAGE and item.ValueType == "CODE":
            language = _triple(item.ConceptCodeSequence[0])
        elif name == _DEVICE_OBSERVER_UID:
            device_uid = str(item.UID)
        elif name == ("121058", "DCM"):
            procedures.append(_triple(item.ConceptCodeSequence[0]))
        elif name == (coding.QUALITATIVE_EVALUATIONS.value, coding.QUALITATIVE_EVALUATIONS.scheme_designator):
            texts.extend(str(c.TextValue) for c in _children(item) if c.ValueType == "TEXT")
            results.extend(_result(c) for c in _children(item) if c.ValueType in ("TEXT", "CODE"))
    groups = [
        group
        for container in _children(root)
        if _name(container) == ("126010", "DCM")
        for group in _children(container)
        if _name(group) == ("125007", "DCM")
    ]
    parsed_groups = report.get_planar_roi_measurement_groups()
    if len(parsed_groups) != len(groups):  # pragma: no cover - would be a highdicom change
        raise NotConvertibleError("measurement groups could not be matched to their content items")
    regions = tuple(_region(group, parsed) for group, parsed in zip(groups, parsed_groups))
    return ReadReport(
        sop_class_uid=str(dataset.SOPClassUID),
        sop_instance_uid=str(dataset.SOPInstanceUID),
        title=_triple(dataset.ConceptNameCodeSequence[0]),
        language=language,
        device_observer_uid=device_uid,
        procedures=tuple(procedures),
        regions=regions,
        texts=tuple(texts),
        results=tuple(results),
    )
