"""Presentation states that draw the regions for viewers that ignore SR coordinates.

One presentation state per annotated image and CT window (PS3.3 A.33): a Grayscale Softcopy
Presentation State for MONOCHROME1/2 images (A.33.1), a Color Softcopy Presentation State
for RGB/YBR images (A.33.2). Each box is a closed POLYLINE graphic object and its label a
text object, in one graphic layer per language (``MEDREGA_EN``, ``MEDREGA_ZH``), so a
viewer can show English, Chinese or both. Graphic objects carry the SR's Tracking UIDs
(PS3.3 C.10.5), so a viewer can tie a box on screen to its SR finding.

A presentation state replaces the image's own display transforms, so each one carries a Softcopy
VOI LUT (PS3.3 C.11.8): the window the regions were found on. Regions of a CT found on a preset
window (the model run's window, e.g. lung and mediastinum for one chest slice) get one
presentation state per window, its VOI LUT the preset's centre and width
(:data:`model.imaging.CT_PRESETS`) and its graphic annotations the regions of that window only.
Otherwise the image's window or VOI LUT when it has one, else the window the model's input was
rendered with (:func:`computed_window`): the CT preset of the Body Part Examined, or the
0.1-99.9 percentile range of the modality values. Each layer has a Recommended
Display Grayscale Value as well as its colour (PS3.3 C.10.7), so grayscale displays tell English
from Chinese.

Images that cannot take a presentation state are skipped with a recorded reason
(:class:`SkippedImage`): palette-color images would need a Pseudo-Color Softcopy
Presentation State, which few viewers support; the SR still carries their regions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from highdicom.color import CIELabColor
from highdicom.pr import (
    AnnotationUnitsValues,
    ColorSoftcopyPresentationState,
    GraphicAnnotation,
    GraphicLayer,
    GraphicObject,
    GraphicTypeValues,
    GrayscaleSoftcopyPresentationState,
    SoftcopyVOILUTTransformation,
    TextObject,
)
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from common.uids import derive_uid
from model.imaging import AUTO_PERCENTILES, CT_PRESETS, ct_preset_for

from . import coding, wording
from .content import RegionFinding, ReportContent, referenced_frame, validate_content
from .errors import InvalidContentError
from .header import (
    CHARACTER_SET,
    MANUFACTURER,
    contributing_equipment,
    finalize_header,
    gateway_version,
    with_type2_defaults,
)
from .report import box_polyline, series_number
from .vr import LO, fit

__all__ = [
    "SkippedImage",
    "PresentationStates",
    "plan_presentation_states",
    "build_presentation_states",
    "LAYERS",
    "LAYER_GRAYSCALE",
    "srgb_icc_profile",
    "computed_window",
    "preset_window",
    "voi_window",
]

logger = logging.getLogger(__name__)

#: Graphic layer of each language: (name, order, description, recommended colour CIELab).
LAYERS: dict[str, tuple[str, int, str, CIELabColor]] = {
    "en": ("MEDREGA_EN", 1, "AI findings, English labels (unverified)", CIELabColor(97.1, -21.6, 94.5)),
    "zh": ("MEDREGA_ZH", 2, "AI findings, Chinese labels (unverified)", CIELabColor(91.1, -48.1, -14.1)),
}

#: Graphic Layer Recommended Display Grayscale Value (0070,0066) per language: P-values of the
#: full range (0xFFFF white); English white, Chinese a lighter grey than most tissue but clearly
#: not white, so a monochrome display still tells the layers apart.
LAYER_GRAYSCALE: dict[str, int] = {"en": 0xFFFF, "zh": 0xA000}

_GRAYSCALE = {"MONOCHROME1", "MONOCHROME2"}
_COLOR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"}
_PS_SLOT = 5


@dataclass(frozen=True)
class SkippedImage:
    """An annotated image that got no presentation state, and why."""

    sop_instance_uid: str
    reason: str


@dataclass(frozen=True)
class PresentationStates:
    """The presentation states made, in image order, and the images skipped."""

    datasets: list[Dataset]
    skipped: list[SkippedImage]


def srgb_icc_profile() -> bytes:
    """An sRGB ICC profile for Color Softcopy PS of images that carry none (PS3.3 C.11.15).

    The profile says the pixel data are sRGB, so it is an input-class (``scnr``) matrix/TRC
    profile, as PS3.3 C.11.15.1.1 expects of the profile of stored pixel data (LittleCMS
    labels its built-in sRGB a display profile). LittleCMS also stamps the creation time
    into the header (ICC.1 7.2.8); it is fixed so the same input gives the same bytes.
    """
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    data = bytearray(profile.tobytes())
    data[12:16] = b"scnr"  # profile/device class (ICC.1 7.2.5)
    # 2000-01-01 00:00:00 as six big-endian uint16 (year, month, day, hour, minute, second)
    data[24:36] = bytes.fromhex("07d0" "0001" "0001" "0000" "0000" "0000")
    data[84:100] = bytes(16)  # profile ID: "not calculated" (it would cover the date)
    return bytes(data)


def preset_window(preset: str) -> tuple[float, float, str]:
    """(Window Center, Window Width, explanation) of a CT preset: :data:`model.imaging.CT_PRESETS`,
    the one definition of those numbers, in Hounsfield units (PS3.3 C.11.2.1.2)."""
    center, width = CT_PRESETS[preset]
    return center, width, f"MEDREGA CT {preset.replace('_', ' ').upper()}"


def voi_window(image: Dataset, window: str | None) -> tuple[float, float, str] | None:
    """The Softcopy VOI LUT window of a presentation state for regions found on ``window``.

    A CT whose regions were found on a preset window shows that preset (as
    :func:`model.imaging.prepare_image` rendered the model's input: it applies presets to CT
    only); otherwise :func:`computed_window`.
    """
    if window is not None and str(image.get("Modality", "")).upper() == "CT":
        return preset_window(window)
    return computed_window(image)


def computed_window(image: Dataset) -> tuple[float, float, str] | None:
    """(Window Center, Window Width, explanation) for a grayscale image that has no VOI of its own.

    ``None`` when the image has a window or a VOI LUT Sequence (the presentation state copies
    it). A CT gets the preset of its Body Part Examined (soft tissue when unknown), in
    Hounsfield units after the Modality LUT (PS3.3 C.11.1); any other image the range between
    the 0.1 and 99.9 percentiles of its modality values (all frames): the windows the model's
    input was rendered with (:mod:`model.imaging`), so the reader sees what the model saw.
    """
    if "WindowCenter" in image or image.get("VOILUTSequence"):
        return None
    if str(image.get("Modality", "")).upper() == "CT":
        return preset_window(ct_preset_for(image.get("BodyPartExamined")))
    if "PixelData" not in image:
        return None
    values = apply_modality_lut(image.pixel_array, image).astype(np.float64, copy=False)
    lo, hi = (float(v) for v in np.percentile(values, AUTO_PERCENTILES))
    if hi <= lo:
        hi = lo + 1.0
    # Linear window (PS3.3 C.11.2.1.2.1): lo maps to the first output value, hi to the last.
    explanation = "MEDREGA AUTO {:g}-{:g} PCT".format(*AUTO_PERCENTILES)
    return round((lo + hi + 1.0) / 2.0, 3), round(hi - lo + 1.0, 3), explanation


def _laterality(image: Dataset) -> str:
    """General Series Laterality (Type 2C, PS3.3 C.7.3.1) of a presentation state.

    A presentation state has no Image Laterality, so it takes the image's side (R or L)
    when the image states one, and is empty ("unknown") otherwise: we cannot tell whether
    the body part is paired.
    """
    for keyword in ("Laterality", "ImageLaterality", "FrameLaterality"):
        value = str(image.get(keyword, "") or "")
        if value in ("R", "L"):
            return value
    return ""


def _languages(contents: Sequence[ReportContent]) -> tuple[str, ...]:
    return tuple(sorted({c.language for c in contents}, key=("en", "zh").index))


def _check_same_study_version(contents: Sequence[ReportContent]) -> None:
    if not contents:
        raise InvalidContentError("no report content given")
    first = contents[0]
    for content in contents:
        validate_content(content)
        if (
            content.evidence[0].StudyInstanceUID != first.evidence[0].StudyInstanceUID
            or content.study_version != first.study_version
        ):
            raise InvalidContentError("presentation states combine contents of one study version only")
    if len(_languages(contents)) != len(contents):
        raise InvalidContentError("one content per language")


def _objects(region: RegionFinding, language: str) -> tuple[GraphicObject, TextObject]:
    x1, y1, x2, y2 = (float(v) for v in region.pixels)
    box = GraphicObject(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=box_polyline(region.pixels),
        units=AnnotationUnitsValues.PIXEL,
        tracking_id=region.tracking_identifier,
        tracking_uid=region.tracking_uid,
    )
    label = coding.finding_code(region.label, region.code, language).meaning
    # English above-left (top corner), Chinese below-left (bottom corner): both readable.
    anchor = (x1, y1) if language == "en" else (x1, y2)
    text = TextObject(
        text_value=label,
        units=AnnotationUnitsValues.PIXEL,
        anchor_point=anchor,
        anchor_point_visible=False,
    )
    return box, text


def _annotations(
    image: Dataset, by_language: Mapping[str, list[RegionFinding]]
) -> tuple[list[GraphicLayer], list[GraphicAnnotation]]:
    layers = []
    annotations = []
    for language, regions in by_language.items():
        name, order, description, colour = LAYERS[language]
        layer = GraphicLayer(layer_name=name, order=order, description=description, display_color=colour)
        layer.GraphicLayerRecommendedDisplayGrayscaleValue = LAYER_GRAYSCALE[language]
        layers.append(layer)
        frames: dict[int | None, list[RegionFinding]] = {}
        for region in regions:
            frames.setdefault(referenced_frame(image, region.frame_number), []).append(region)
        for frame, frame_regions in frames.items():
            objects = [_objects(region, language) for region in frame_regions]
            annotations.append(
                GraphicAnnotation(
                    referenced_images=[image],
                    graphic_layer=layer,
                    referenced_frame_number=frame,
                    graphic_objects=[box for box, _ in objects],
                    text_objects=[text for _, text in objects],
                )
            )
    return layers, annotations


def plan_presentation_states(
    contents: ReportContent | Sequence[ReportContent],
    source_datasets_by_sop_uid: Mapping[str, Dataset],
) -> PresentationStates:
    """Presentation states for every image that carries regions, plus the images skipped.

    ``contents``: one :class:`ReportContent` (one layer) or one per language of the same
    study version (one layer each, in one presentation state per image).
    ``source_datasets_by_sop_uid``: the referenced images (headers suffice: Rows, Columns,
    Photometric Interpretation, windowing and the patient/study attributes are used).
    Deterministic: UIDs derive from study, version, languages and image.
    """
    if isinstance(contents, ReportContent):
        contents = [contents]
    contents = list(contents)
    _check_same_study_version(contents)
    languages = _languages(contents)
    first = contents[0]
    study_uid = str(first.evidence[0].StudyInstanceUID)
    version = str(first.study_version)
    tag = "+".join(languages)
    if len({c.uid_root for c in contents}) != 1:
        raise InvalidContentError("the contents of one study version come from one installation (uid_root)")
    series_uid = derive_uid(study_uid, version, tag, "ps-series", root=first.uid_root)

    # One presentation state per image and CT window: its VOI LUT is the window the regions
    # were found on, and it draws those regions only.
    images: dict[tuple[str, str | None], dict[str, list[RegionFinding]]] = {}
    for content in sorted(contents, key=lambda c: languages.index(c.language)):
        for region in content.regions:
            by_language = images.setdefault((region.referenced_sop_instance_uid, region.window), {})
            by_language.setdefault(content.language, []).append(region)

    datasets: list[Dataset] = []
    skipped: list[SkippedImage] = []
    skipped_uids: set[str] = set()
    for (sop_uid, window_name), by_language in images.items():
        image = source_datasets_by_sop_uid.get(sop_uid)
        if image is None:
            raise InvalidContentError(f"source image {sop_uid} was not given; it carries regions")
        photometric = str(image.get("PhotometricInterpretation", ""))
        cls: type[GrayscaleSoftcopyPresentationState] | type[ColorSoftcopyPresentationState]
        if photometric in _GRAYSCALE:
            cls = GrayscaleSoftcopyPresentationState
        elif photometric in _COLOR and int(image.get("SamplesPerPixel", 1)) == 3:
            cls = ColorSoftcopyPresentationState
        else:
            reason = (
                f"Photometric Interpretation {photometric or 'missing'}: no Grayscale or Color "
                "Softcopy Presentation State applies; the SR carries the regions"
            )
            if sop_uid not in skipped_uids:  # once per image, whatever its windows
                logger.warning("no presentation state for %s: %s", sop_uid, reason)
                skipped.append(SkippedImage(sop_uid, reason))
                skipped_uids.add(sop_uid)
            continue
        image = with_type2_defaults(image)
        layers, annotations = _annotations(image, by_language)
        kwargs: dict[str, Any] = {}
        if cls is ColorSoftcopyPresentationState:
            kwargs["icc_profile"] = bytes(image.ICCProfile) if "ICCProfile" in image else srgb_icc_profile()
        else:
            window = voi_window(image, window_name)
            if window is not None:
                center, width, explanation = window
                kwargs["voi_lut_transformations"] = [
                    SoftcopyVOILUTTransformation(window_center=[center], window_width=[width],
                                                 window_explanation=[explanation], voi_lut_function="LINEAR")
                ]
        ps = cls(
            referenced_images=[image],
            series_instance_uid=series_uid,
            series_number=series_number(first.study_version, _PS_SLOT),
            sop_instance_uid=derive_uid(study_uid, version, tag, "ps", sop_uid,
                                        *([window_name] if window_name else []), root=first.uid_root),
            instance_number=len(datasets) + 1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=MANUFACTURER,
            software_versions=gateway_version(),
            # highdicom annotates str but documents and handles None (no Device Serial Number)
            device_serial_number=None,  # type: ignore[arg-type]  # see above
            content_label=wording.gsps_content_label(first.algorithm),
            content_description=fit(
                wording.gsps_series_description(languages, first.algorithm, first.study_version), LO
            ),
            graphic_annotations=annotations,
            graphic_layers=layers,
            institution_name=first.institution_name,
            series_description=wording.gsps_series_description(languages, first.algorithm, first.study_version),
            specific_character_set=CHARACTER_SET,
            **kwargs,
        )
        ps.Laterality = _laterality(image)
        # plain data sets where highdicom types its ContributingEquipment (as in sr_writer.report)
        ps.ContributingEquipmentSequence = contributing_equipment(  # type: ignore[assignment]  # see above
            first.algorithm, first.content_datetime, image
        )
        finalize_header(ps, first.content_datetime)
        datasets.append(ps)
    return PresentationStates(datasets, skipped)


def build_presentation_states(
    content: ReportContent | Sequence[ReportContent],
    source_datasets_by_sop_uid: Mapping[str, Dataset],
) -> list[Dataset]:
    """Presentation states of the images that carry regions (see :func:`plan_presentation_states`).

    Images that cannot take one are logged at WARNING and left out; call
    :func:`plan_presentation_states` to get the reasons as data.
    """
    return plan_presentation_states(content, source_datasets_by_sop_uid).datasets
