"""The AI result SR: Comprehensive 3D SR with a TID 1500 Measurement Report (IHE AIR).

Document tree (PS3.16 TID 1500), one document per language and study version::

    CONTAINER (126000, DCM, "Imaging Measurement Report"), meaning localized and saying
    |         "AI-generated, unverified" (or "test model output"); continuity SEPARATE
    +- HAS CONCEPT MOD  CODE  Language of Content Item and Descendants (TID 1204)
    +- HAS OBS CONTEXT  Observer Type = Device, Device Observer UID/Name/... (TID 1001/1004)
    +- HAS CONCEPT MOD  CODE  Procedure Reported (1-n)
    +- CONTAINS CONTAINER Image Library (TID 1600): every analysed image, with its descriptors
    +- CONTAINS CONTAINER Imaging Measurements            (only when there are regions)
    |  +- CONTAINS CONTAINER Measurement Group (TID 1410), one per box, continuity SEPARATE
    |     +- HAS OBS CONTEXT TEXT Tracking Identifier ("region N"), UIDREF Tracking Unique Identifier
    |     +- CONTAINS CODE Finding (SCT from finding_codes.csv, or 99MEDREGA local code)
    |     +- HAS CONCEPT MOD TEXT Algorithm Name/Version/Manufacturer/Parameters (TID 4019);
    |     |  a parameter "window: lung (center -600 HU, width 1500 HU)" names the CT window
    |     |  the box was found on (model/imaging.py CT_PRESETS), when the run used one
    |     +- HAS CONCEPT MOD CODE Finding Site (TID 1419; anatomy from finding_codes.csv, if known)
    |     +- CONTAINS SCOORD Image Region: closed POLYLINE, 5 points, pixel coordinates
    |     |  +- SELECTED FROM IMAGE (SOP Class/Instance, frame of multi-frame images)
    |     +- CONTAINS NUM Width / Height (mm), Area (mm2)   (when Pixel Spacing is known)
    |     |  +- INFERRED FROM SCOORD Source: the same box   (TID 300; where OHIF looks for it)
    |     +- CONTAINS TEXT Comment: the finding's name     (the label OHIF gives the measurement)
    |     +- CONTAINS TEXT Comment: the model's description
    +- CONTAINS CONTAINER Qualitative Evaluations         (report texts, or "no findings")
       +- CONTAINS CODE Finding: each coded image finding (classification)
       |  +- INFERRED FROM IMAGE Source of Measurement, one per image (and frame) it was read from
       +- CONTAINS TEXT Finding: each report text exactly as the model wrote it
       |  +- INFERRED FROM IMAGE Source of Measurement, one per image (and frame) it was read from
       +- CONTAINS TEXT Comment: each note (a cut-off answer, a sentence left out)

A result read from several images of one series (a report on 3 slices of a CT) that is the same
each time (same text or code, task and language, :func:`sr_writer.content.result_key`) is one
item with an INFERRED FROM reference per image (PS3.3 C.17.3), not one copy per image.

The header (PS3.3 A.35.13): Verification Flag UNVERIFIED, Preliminary Flag PRELIMINARY,
Completion Flag from ``content.complete``, evidence of every analysed instance, the previous
version's SR in the Predecessor Documents Sequence, UIDs derived from study/version/language.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    ContentItem,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    CoordinatesForMeasurement,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    GraphicTypeValues,
    ImageContentItem,
    ImageLibraryEntryDescriptors,
    ImageRegion,
    LanguageOfContentItemAndDescendants,
    Measurement,
    MeasurementReport,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    RelationshipTypeValues,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from common.uids import derive_uid
from model.imaging import CT_PRESETS

from . import coding, wording
from .content import (
    ImageFinding,
    RegionFinding,
    ReportContent,
    Source,
    evidence_by_sop_uid,
    group_identical,
    referenced_frame,
    result_key,
    validate_content,
)
from .header import (
    CHARACTER_SET,
    MANUFACTURER,
    algorithm_device_uid,
    contributing_equipment,
    finalize_header,
    gateway_version,
    with_type2_defaults,
)
from .vr import clean_text

__all__ = [
    "build_sr",
    "sr_uids",
    "series_number",
    "box_polyline",
    "box_measurements_mm",
    "algorithm_identification",
    "WINDOW_PARAMETER",
    "window_parameter",
]

_LANGUAGE_SLOT = {"en": 1, "zh": 2}


def sr_uids(study_instance_uid: str, study_version: int, language: str,
            root: str | None = None) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the SR of one study version and language.

    ``root``: the installation's UID root (see :mod:`common.uids`); ``None`` for the default.
    """
    version = str(study_version)
    return (
        derive_uid(study_instance_uid, version, language, "sr-series", root=root),
        derive_uid(study_instance_uid, version, language, "sr", root=root),
    )


def series_number(study_version: int, slot: int) -> int:
    """Series Number: 9000 + 10 x version + slot (1 = en SR, 2 = zh SR, 5 = presentation states).

    High numbers keep our series after the acquired ones in PACS series lists.
    """
    return 9000 + 10 * study_version + slot


def box_polyline(pixels: tuple[float, float, float, float]) -> np.ndarray:
    """The box as a closed POLYLINE: 5 (column, row) points, first = last (PS3.3 C.18.6.1.2)."""
    x1, y1, x2, y2 = (float(v) for v in pixels)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def box_measurements_mm(region: RegionFinding) -> tuple[float, float, float] | None:
    """(width mm, height mm, area mm2) of a box, or ``None`` without Pixel Spacing.

    Pixel Spacing is (row spacing, column spacing): rows are stacked vertically, so the
    row spacing scales the height and the column spacing the width (PS3.3 10.7.1.3).
    """
    if region.pixel_spacing is None:
        return None
    row_spacing, column_spacing = (float(v) for v in region.pixel_spacing)
    x1, y1, x2, y2 = (float(v) for v in region.pixels)
    width = round((x2 - x1) * column_spacing, 3)
    height = round((y2 - y1) * row_spacing, 3)
    return width, height, round(width * height, 3)


#: Prefix of the TID 4019 Algorithm Parameters (DCM 111002) value naming the CT window a region's
#: input image was rendered with, e.g. "window: lung (center -600 HU, width 1500 HU)".
WINDOW_PARAMETER = "window: "


def window_parameter(window: str) -> str:
    """The Algorithm Parameters text of a CT window preset (:data:`model.imaging.CT_PRESETS`)."""
    center, width = CT_PRESETS[window]
    return f"{WINDOW_PARAMETER}{window} (center {center:g} HU, width {width:g} HU)"


def algorithm_identification(content: ReportContent, window: str | None = None) -> AlgorithmIdentification:
    """TID 4019 Algorithm Identification of the model that produced the findings.

    ``window``: the CT window the region's image was rendered with for the model, recorded as one
    more Algorithm Parameters (DCM 111002) value of the region's group (TID 1410 includes TID
    4019), so a reader of the SR alone can show the box on the picture it was found on.
    """
    algorithm = content.algorithm
    parameters = [f"backend: {algorithm.backend}", f"weights: {algorithm.weights_id}"]
    if window is not None:
        parameters.append(window_parameter(window))
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        manufacturer=algorithm.manufacturer,
        parameters=parameters,
    )


def _observation_context(content: ReportContent) -> ObservationContext:
    """TID 1001 with a device observer (TID 1004): the algorithm, never a person."""
    algorithm = content.algorithm
    device = DeviceObserverIdentifyingAttributes(
        uid=algorithm_device_uid(algorithm),
        name=algorithm.name,
        manufacturer_name=algorithm.manufacturer,
        model_name=algorithm.name,
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _region_group(region: RegionFinding, content: ReportContent, image: Dataset) -> tuple[
    PlanarROIMeasurementsAndQualitativeEvaluations, CodedConcept
]:
    """One TID 1410 Planar ROI Measurements group for one box.

    Beyond what TID 1410 requires, the group is laid out so that OHIF (``@cornerstonejs/adapters``
    and ``@ohif/extension-cornerstone-dicom-sr``) shows and hydrates it; see docs/sr-content.md:

    * every NUM (TID 300) is INFERRED FROM the same SCOORD as the Image Region: the adapters take
      the first NUM of a group as the holder of the ROI and look for the SCOORD under it;
    * Finding Site (SCT 363698007, TID 1419) names the anatomy when the table knows it: OHIF's
      SR viewport labels a box with its NUMs and its Finding Site only;
    * the first Comment (DCM 121106) is the finding's name: Cornerstone takes the first Comment
      of a group as the label of the measurement it hydrates; the model's description follows
      as a second Comment;
    * the group's continuity is SEPARATE, so renderers list its items instead of running them
      into one sentence (PS3.3 C.17.3.2.2).
    """
    finding = coding.finding_code(region.label, region.code, content.language)
    frame = referenced_frame(image, region.frame_number)
    frames = [frame] if frame is not None else None

    def source_image() -> SourceImageForRegion:
        return SourceImageForRegion(
            referenced_sop_class_uid=region.referenced_sop_class_uid,
            referenced_sop_instance_uid=region.referenced_sop_instance_uid,
            referenced_frame_numbers=frames,
        )

    image_region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(region.pixels),
        source_image=source_image(),
    )
    measurements = []
    sizes = box_measurements_mm(region)
    if sizes is not None:
        for name, value, unit in zip(
            (coding.WIDTH, coding.HEIGHT, coding.AREA), sizes,
            (coding.MILLIMETER, coding.MILLIMETER, coding.SQUARE_MILLIMETER),
        ):
            measurements.append(Measurement(name=name, value=value, unit=unit))
    site = coding.finding_site(finding, content.language)
    group = PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=region.tracking_uid, identifier=region.tracking_identifier
        ),
        referenced_region=image_region,
        finding_type=finding,
        finding_sites=[FindingSite(site)] if site is not None else None,
        algorithm_id=algorithm_identification(content, region.window),
        measurements=measurements or None,
    )
    container = group[0]
    container.ContinuityOfContent = "SEPARATE"
    for item in container.ContentSequence:
        if item.ValueType == "NUM":
            # TID 1419 is extensible; highdicom's template class has no slot for this child.
            coordinates = CoordinatesForMeasurement(
                graphic_type=GraphicTypeValues.POLYLINE,
                graphic_data=box_polyline(region.pixels),
                source_image=source_image(),
            )
            if "ContentSequence" in item:
                item.ContentSequence.append(coordinates)
            else:
                item.ContentSequence = ContentSequence([coordinates])
    comments: list[tuple[str, str | None]] = [(finding.meaning, None)]
    if region.description:
        comments.append((clean_text(region.description), region.description_language))
    for text, language in comments:
        item = TextContentItem(name=coding.COMMENT, value=text, relationship_type=RelationshipTypeValues.CONTAINS)
        _mark_language(item, language, content.language)
        container.ContentSequence.append(item)
    return group, finding


def _mark_language(item: ContentItem, language: str | None, document_language: str) -> None:
    """Give ``item`` its own TID 1204 Language of Content Item when it is not in the document's.

    A task MedRegA was trained in one language only is reported in that language in both SRs
    (PS3.16 TID 1204, HAS CONCEPT MOD on the item).
    """
    if language is None or language == document_language:
        return
    modifier = LanguageOfContentItemAndDescendants(coding.language_code(language))
    if "ContentSequence" in item:
        item.ContentSequence.extend(modifier)
    else:
        item.ContentSequence = ContentSequence(modifier)


def image_library(evidence: Sequence[Dataset]) -> ContainerContentItem:
    """TID 1600 Image Library: one Image Library Group holding an IMAGE item per analysed instance.

    One group, although TID 1600 allows a group per set of shared descriptors: OHIF lists the
    SR's images from the first group only. Each entry carries the TID 1602 descriptors highdicom
    derives from its header; an image whose header lacks what they need (a radiograph without
    Patient Orientation) is listed without them (they are optional; viewers read the reference).
    """
    items = []
    for ds in evidence:
        item = ImageContentItem(
            name=coding.SOURCE,
            referenced_sop_class_uid=str(ds.SOPClassUID),
            referenced_sop_instance_uid=str(ds.SOPInstanceUID),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        try:
            descriptors = ImageLibraryEntryDescriptors(ds)
        except (AttributeError, ValueError, TypeError):
            descriptors = None
        if descriptors:
            item.ContentSequence = ContentSequence()
            item.ContentSequence.extend(descriptors)
        items.append(item)
    group = ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS,
                                 is_content_continuous=False)
    group.ContentSequence = ContentSequence(items)
    library = ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS,
                                   is_content_continuous=False)
    library.ContentSequence = ContentSequence([group])
    return library


def _inferred_from(item: ContentItem, sources: Sequence[Source | None],
                   evidence: dict[str, Dataset] | None) -> None:
    """An IMAGE child INFERRED FROM each image (and frame) the item was read from, in order, each once."""
    if evidence is None:
        return
    images = []
    for source in dict.fromkeys(sources):
        if source is None or source[1] not in evidence:
            continue
        sop_class_uid, sop_instance_uid, frame = source
        images.append(ImageContentItem(
            name=coding.SOURCE_OF_MEASUREMENT,
            referenced_sop_class_uid=sop_class_uid,
            referenced_sop_instance_uid=sop_instance_uid,
            referenced_frame_numbers=referenced_frame(evidence[sop_instance_uid], frame),
            relationship_type=RelationshipTypeValues.INFERRED_FROM,
        ))
    if not images:
        return
    if "ContentSequence" in item:
        item.ContentSequence.extend(images)
    else:
        item.ContentSequence = ContentSequence(images)


@dataclass(frozen=True)
class _Text:
    """One report text as handed over: the text, the image it was read from, its language, its task."""

    text: str
    source: Source | None = None
    language: str | None = None
    task: str | None = None


def _series_of(source: Source | None, evidence: dict[str, Dataset] | None) -> str | None:
    if source is None or evidence is None or source[1] not in evidence:
        return None
    return str(evidence[source[1]].SeriesInstanceUID)


def _texts_container(
    texts: Sequence[_Text],
    evidence: dict[str, Dataset] | None = None,
    *,
    document_language: str = "",
    image_findings: Sequence[ImageFinding] = (),
    notes: Sequence[str] = (),
) -> ContainerContentItem:
    """Qualitative Evaluations: each coded image finding and each report text, INFERRED FROM the
    image(s) it was read from; a text in another language than the document's says which (TID 1204);
    then the notes (Comment) about results that are not findings, each once.

    Identical results (:func:`sr_writer.content.result_key`) are one item referencing all their images.
    """
    container = ContainerContentItem(
        name=coding.QUALITATIVE_EVALUATIONS,
        relationship_type=RelationshipTypeValues.CONTAINS,
        is_content_continuous=False,  # one text per paragraph, not one run-on paragraph
    )
    items: list[ContentItem] = []
    for same_codes in group_identical(image_findings, lambda f: result_key(
            code=f.code, task=f.task, language=None, series_instance_uid=_series_of(f.source, evidence))):
        coded = CodeContentItem(name=coding.FINDING, value=CodedConcept(*same_codes[0].code),
                                relationship_type=RelationshipTypeValues.CONTAINS)
        _inferred_from(coded, [f.source for f in same_codes], evidence)
        items.append(coded)
    for same_texts in group_identical(texts, lambda t: result_key(
            text=t.text, task=t.task, language=t.language, series_instance_uid=_series_of(t.source, evidence))):
        first = same_texts[0]
        item = TextContentItem(name=coding.FINDING, value=clean_text(first.text),
                               relationship_type=RelationshipTypeValues.CONTAINS)
        _mark_language(item, first.language, document_language)
        _inferred_from(item, [t.source for t in same_texts], evidence)
        items.append(item)
    for note in dict.fromkeys(notes):  # one run per image repeats its note: say it once
        items.append(TextContentItem(name=coding.COMMENT, value=clean_text(note),
                                     relationship_type=RelationshipTypeValues.CONTAINS))
    container.ContentSequence = ContentSequence(items)
    return container


def build_measurement_report(content: ReportContent) -> tuple[MeasurementReport, list[CodedConcept]]:
    """The TID 1500 content tree of ``content`` and every Finding code used in it."""
    title = CodedConcept(
        coding.IMAGING_MEASUREMENT_REPORT.value,
        coding.IMAGING_MEASUREMENT_REPORT.scheme_designator,
        wording.document_title_meaning(content.language, content.algorithm),
    )
    root = ContainerContentItem(name=title, template_id="1500", is_content_continuous=False)
    root.ContentSequence = ContentSequence()
    root.ContentSequence.extend(LanguageOfContentItemAndDescendants(coding.language_code(content.language)))
    root.ContentSequence.extend(_observation_context(content))
    for procedure in coding.procedure_codes(content.evidence[0]):
        root.ContentSequence.append(
            CodeContentItem(
                name=codes.DCM.ProcedureReported,
                value=procedure,
                relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
            )
        )
    # TID 1600 Image Library (TID 1500 row 5): OHIF lists the SR's images from it, older
    # builds read it without checking that it is there.
    root.ContentSequence.append(image_library(content.evidence))
    findings: list[CodedConcept] = []
    if content.regions:
        evidence = evidence_by_sop_uid(content)
        measurements = ContainerContentItem(
            name=codes.DCM.ImagingMeasurements,
            relationship_type=RelationshipTypeValues.CONTAINS,
            is_content_continuous=False,
        )
        measurements.ContentSequence = ContentSequence()
        for region in content.regions:
            group, finding = _region_group(region, content, evidence[region.referenced_sop_instance_uid])
            measurements.ContentSequence.extend(group)
            findings.append(finding)
        root.ContentSequence.append(measurements)
    count = len(content.report_texts)
    sources = list(content.report_sources) or [None] * count
    languages = list(content.report_languages) or [None] * count
    tasks = list(content.report_tasks) or [None] * count
    kept = [_Text(text, source, language, task)
            for text, source, language, task in zip(content.report_texts, sources, languages, tasks)
            if text and text.strip()]
    if not kept and not content.image_findings and not content.regions:
        # TID 1500 needs Imaging Measurements or Qualitative Evaluations: say "nothing found".
        kept = [_Text(wording.no_findings_text(content.language))]
    notes = [wording.note_text(content.language, note) for note in content.notes]
    if kept or content.image_findings or notes:
        root.ContentSequence.append(
            _texts_container(kept, evidence_by_sop_uid(content), document_language=content.language,
                             image_findings=content.image_findings, notes=notes)
        )
        findings.extend(CodedConcept(*f.code) for f in content.image_findings)
    return MeasurementReport.from_sequence([root], copy=False), findings


def _predecessors(content: ReportContent) -> list[Dataset] | None:
    if not content.predecessor:
        return None
    items = []
    for study_uid, series_uid, class_uid, instance_uid in content.predecessor:
        item = Dataset()
        item.StudyInstanceUID = study_uid
        item.SeriesInstanceUID = series_uid
        item.SOPClassUID = class_uid
        item.SOPInstanceUID = instance_uid
        items.append(item)
    return items


def build_sr(content: ReportContent) -> Comprehensive3DSR:
    """Build the Comprehensive 3D SR (PS3.3 A.35.13) of one language and study version.

    Deterministic: the same ``content`` gives the same dataset, UIDs and dates included.
    Raises :class:`~sr_writer.errors.InvalidContentError` for input that breaks the contract.
    """
    validate_content(content)
    source = content.evidence[0]
    report, findings = build_measurement_report(content)
    series_uid, sop_uid = sr_uids(str(source.StudyInstanceUID), content.study_version, content.language,
                                  content.uid_root)
    schemes = [
        CodingSchemeIdentificationItem(
            designator=item.CodingSchemeDesignator,
            name=item.CodingSchemeName,
            responsible_organization=item.CodingSchemeResponsibleOrganization,
        )
        for item in coding.coding_scheme_identification(findings)
    ]
    when = content.content_datetime
    sr = Comprehensive3DSR(
        evidence=[with_type2_defaults(source), *content.evidence[1:]],
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number(content.study_version, _LANGUAGE_SLOT[content.language]),
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=gateway_version(),
        is_complete=content.complete,
        is_final=False,
        is_verified=False,
        institution_name=content.institution_name,
        previous_versions=_predecessors(content),
        record_evidence=True,
        series_description=wording.series_description(
            content.language, content.algorithm, content.study_version
        ),
        coding_schemes=schemes or None,
        content_date=when.date(),
        content_time=when.time().replace(tzinfo=None),
        specific_character_set=CHARACTER_SET,
    )
    # highdicom types the attribute as a list of its ContributingEquipment; these items are plain data
    # sets of the same attributes (PS3.3 C.12.1.1.5), some copied element by element from the source.
    sr.ContributingEquipmentSequence = contributing_equipment(  # type: ignore[assignment]  # see above
        content.algorithm, when, source
    )
    finalize_header(sr, when)
    return sr
