"""Fallback documents for destinations that do not accept Comprehensive 3D SR.

The sender asks :func:`fallback_document` for the most capable SR class a destination
accepts (PS3.4 B.5: Storage SOP Classes), in this order:

1. Comprehensive 3D SR (PS3.3 A.35.13) - our document as built;
2. Comprehensive SR (A.35.3) - same tree: it differs only in not allowing SCOORD3D;
3. Enhanced SR (A.35.2) - same tree: SCOORD but no SCOORD3D, no by-reference relations;
4. Basic Text SR (A.35.1) - no NUM and no SCOORD: the content is rewritten as a
   TID 2000 Basic Diagnostic Imaging Report whose Findings section holds the report texts
   and one TEXT per region that spells out the finding, its code, the box in pixels, the
   image and frame, the sizes, the description and the tracking identifier/UID, with an
   INFERRED FROM IMAGE reference to the image (TID 2002).

A fallback is a different SOP Instance (a UID names one instance of one SOP Class): its UID
is :func:`fallback_uid` of the original and the class, so retries give the same UID, and
Predecessor Documents pointing at our earlier versions are re-pointed to their fallbacks
of the same class (what this destination received).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterable

from highdicom.sr import (
    CodedConcept,
    ContainerContentItem,
    ContentSequence,
    ImageContentItem,
    RelationshipTypeValues,
    TextContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
)

from common.uids import derive_uid

from . import coding
from .errors import NoAcceptedSRClassError, NotConvertibleError
from .readback import ReadRegion, ReadReport, read_report

__all__ = [
    "SR_CLASSES_BY_PREFERENCE",
    "fallback_document",
    "fallback_uid",
    "to_comprehensive_sr",
    "to_enhanced_sr",
    "to_basic_text_sr",
    "describe_region",
]

#: SR Storage SOP Classes we can produce, most capable first.
SR_CLASSES_BY_PREFERENCE: tuple[str, ...] = (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    BasicTextSRStorage,
)

_TEMPLATE_2000 = "2000"
_FINDINGS_HEADING = CodedConcept(codes.LN.Findings.value, "LN", "Findings")  # CID 7001
_BEST_ILLUSTRATION = CodedConcept("121080", "DCM", "Best illustration of finding")  # CID 7003


def fallback_uid(sop_instance_uid: str, sop_class_uid: str) -> str:
    """SOP Instance UID of the fallback of ``sop_instance_uid`` in ``sop_class_uid``."""
    return derive_uid(sop_instance_uid, "fallback", sop_class_uid)


def _walk(items: Iterable[Dataset]) -> Iterable[Dataset]:
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []) or [])


def _reclass(dataset: Dataset, sop_class_uid: str) -> Dataset:
    """A plain deep copy of ``dataset`` as an instance of another SR class."""
    out = Dataset(copy.deepcopy(dataset))
    if hasattr(dataset, "file_meta"):
        out.file_meta = copy.deepcopy(dataset.file_meta)
        out.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    out.SOPClassUID = UID(sop_class_uid)
    out.SOPInstanceUID = fallback_uid(str(dataset.SOPInstanceUID), sop_class_uid)
    if hasattr(out, "file_meta"):
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    for study in out.get("PredecessorDocumentsSequence", []) or []:
        for series in study.ReferencedSeriesSequence:
            for instance in series.ReferencedSOPSequence:
                if instance.ReferencedSOPClassUID == Comprehensive3DSRStorage:
                    instance.ReferencedSOPInstanceUID = fallback_uid(
                        str(instance.ReferencedSOPInstanceUID), sop_class_uid
                    )
                    instance.ReferencedSOPClassUID = sop_class_uid
    return out


def _require_sr(dataset: Dataset) -> None:
    if str(dataset.get("SOPClassUID", "")) not in SR_CLASSES_BY_PREFERENCE or "ContentSequence" not in dataset:
        raise NotConvertibleError(f"{dataset.get('SOPClassUID', '?')} is not an SR class we convert")


def _forbid(dataset: Dataset, target: str, *, scoord3d: bool, by_reference: bool) -> None:
    for item in _walk(dataset.ContentSequence):
        if scoord3d and item.get("ValueType") == "SCOORD3D":
            raise NotConvertibleError(f"{target} cannot hold SCOORD3D (3D coordinates)")
        if by_reference and "ReferencedContentItemIdentifier" in item:
            raise NotConvertibleError(f"{target} cannot hold by-reference relationships")


def to_comprehensive_sr(dataset: Dataset) -> Dataset:
    """The same document as Comprehensive SR (no SCOORD3D allowed; we never write one)."""
    _require_sr(dataset)
    _forbid(dataset, "Comprehensive SR", scoord3d=True, by_reference=False)
    return _reclass(dataset, ComprehensiveSRStorage)


def to_enhanced_sr(dataset: Dataset) -> Dataset:
    """The same document as Enhanced SR: SCOORD kept, SCOORD3D and by-reference refused.

    TID 1500 is valid in Enhanced SR as we use it (PS3.3 A.35.2.3 relationship
    constraints: CONTAINER, CODE, TEXT, NUM, UIDREF, SCOORD with SELECTED FROM IMAGE).
    """
    _require_sr(dataset)
    _forbid(dataset, "Enhanced SR", scoord3d=True, by_reference=True)
    return _reclass(dataset, EnhancedSRStorage)


def _number(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"


def describe_region(region: ReadRegion, language: str) -> str:
    """One region spelled out as text (for Basic Text SR, which has no SCOORD or NUM)."""
    meaning, scheme, value = region.finding[2], region.finding[1], region.finding[0]
    x1, y1, x2, y2 = (_number(v) for v in region.box)
    frame = region.frame_numbers[0] if region.frame_numbers else None
    sizes = region.measurements
    if language == "zh":
        text = (
            f"{meaning} [{scheme} {value}]：框 x {x1}–{x2}，y {y1}–{y2}（像素），"
            f"图像 {region.referenced_sop_instance_uid}" + (f"，第 {frame} 帧" if frame else "")
        )
        if {"Width", "Height", "Area"} <= sizes.keys():
            text += (
                f"；宽 {_number(sizes['Width'][0])} mm，高 {_number(sizes['Height'][0])} mm，"
                f"面积 {_number(sizes['Area'][0])} mm2"
            )
        text += "。"
        if region.description:
            text += f"{region.description}"
        text += f"（跟踪 {region.tracking_identifier}，UID {region.tracking_uid}）"
        return text
    text = (
        f"{meaning} [{scheme} {value}]: box x {x1}-{x2}, y {y1}-{y2} (pixels) "
        f"on image {region.referenced_sop_instance_uid}" + (f", frame {frame}" if frame else "")
    )
    if {"Width", "Height", "Area"} <= sizes.keys():
        text += (
            f"; width {_number(sizes['Width'][0])} mm, height {_number(sizes['Height'][0])} mm, "
            f"area {_number(sizes['Area'][0])} mm2"
        )
    text += "."
    if region.description:
        text += f" {region.description}"
    text += f" (tracking {region.tracking_identifier}, UID {region.tracking_uid})"
    return text


def _basic_title(title: tuple[str, str, str]) -> CodedConcept:
    meaning = title[2].replace("Imaging Measurement Report", "Diagnostic Imaging Report")
    meaning = meaning.replace("影像测量报告", "影像诊断报告")
    return CodedConcept(coding.DIAGNOSTIC_IMAGING_REPORT.value, "LN", meaning)


def _basic_content(dataset: Dataset, report: ReadReport) -> ContainerContentItem:
    language = report.language[0] if report.language else "en"
    root = ContainerContentItem(name=_basic_title(report.title), template_id=_TEMPLATE_2000)
    root.ContentSequence = ContentSequence()
    # Language (TID 1204), observation context (TID 1001) and procedures carry over as is.
    for item in dataset.ContentSequence:
        if item.RelationshipType in ("HAS CONCEPT MOD", "HAS OBS CONTEXT"):
            root.ContentSequence.append(copy.deepcopy(item))
    findings = ContainerContentItem(name=_FINDINGS_HEADING, relationship_type=RelationshipTypeValues.CONTAINS)
    findings.ContentSequence = ContentSequence()
    for text in report.texts:
        findings.ContentSequence.append(
            TextContentItem(name=coding.FINDING, value=text, relationship_type=RelationshipTypeValues.CONTAINS)
        )
    for region in report.regions:
        item = TextContentItem(
            name=coding.FINDING,
            value=describe_region(region, language),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        item.ContentSequence = ContentSequence(
            [
                ImageContentItem(
                    name=_BEST_ILLUSTRATION,
                    referenced_sop_class_uid=region.referenced_sop_class_uid,
                    referenced_sop_instance_uid=region.referenced_sop_instance_uid,
                    referenced_frame_numbers=list(region.frame_numbers) or None,
                    relationship_type=RelationshipTypeValues.INFERRED_FROM,
                )
            ]
        )
        findings.ContentSequence.append(item)
    root.ContentSequence.append(findings)
    return root


def _schemes_used(root: Dataset) -> set[str]:
    used = set()
    for item in _walk([root]):
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence", "MeasurementUnitsCodeSequence"):
            for code in item.get(keyword, []) or []:
                used.add(str(code.CodingSchemeDesignator))
    return used


def to_basic_text_sr(dataset: Dataset) -> Dataset:
    """Our TID 1500 document rewritten as a TID 2000 Basic Text SR (no SCOORD, no NUM).

    Raises :class:`NotConvertibleError` for documents that are not our TID 1500 reports.
    """
    _require_sr(dataset)
    report = read_report(dataset)
    out = _reclass(dataset, BasicTextSRStorage)
    root = _basic_content(dataset, report)
    out.ConceptNameCodeSequence = root.ConceptNameCodeSequence
    out.ContentTemplateSequence = root.ContentTemplateSequence
    out.ContinuityOfContent = root.ContinuityOfContent
    out.ValueType = "CONTAINER"
    out.ContentSequence = root.ContentSequence
    used = _schemes_used(out)
    kept = [item for item in out.get("CodingSchemeIdentificationSequence", []) if item.CodingSchemeDesignator in used]
    if kept:
        out.CodingSchemeIdentificationSequence = kept
    elif "CodingSchemeIdentificationSequence" in out:
        del out.CodingSchemeIdentificationSequence
    return out


#: keyed by SOP Class UID (looked up as str)
_CONVERTERS: dict[str, Callable[[Dataset], Dataset]] = {
    ComprehensiveSRStorage: to_comprehensive_sr,
    EnhancedSRStorage: to_enhanced_sr,
    BasicTextSRStorage: to_basic_text_sr,
}


def fallback_document(dataset: Dataset, accepted_sop_class_uids: Collection[str]) -> Dataset:
    """``dataset`` itself if its class is accepted, else the closest SR class accepted.

    Non-SR objects (presentation states) have no fallback: they are returned when accepted
    and raise :class:`NotConvertibleError` otherwise. Raises
    :class:`NoAcceptedSRClassError` when the destination accepts none of our SR classes.
    """
    accepted = {str(uid) for uid in accepted_sop_class_uids}
    sop_class = str(dataset.SOPClassUID)
    if sop_class in accepted:
        return dataset
    if sop_class not in SR_CLASSES_BY_PREFERENCE:
        raise NotConvertibleError(f"no fallback exists for SOP Class {sop_class}; the destination refuses it")
    for candidate in SR_CLASSES_BY_PREFERENCE[SR_CLASSES_BY_PREFERENCE.index(sop_class) + 1 :]:
        if candidate in accepted:
            return _CONVERTERS[candidate](dataset)
    raise NoAcceptedSRClassError(sorted(accepted))
