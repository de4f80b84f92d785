"""Presentation states: boxes and labels per language, valid for dciodvfy and DCMTK."""

from __future__ import annotations

import dataclasses
import io
import logging
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageCms, ImageDraw
from pydicom.uid import ColorSoftcopyPresentationStateStorage, GrayscaleSoftcopyPresentationStateStorage

from model.imaging import CT_PRESETS, ct_preset_for
from sr_writer import coding
from sr_writer.content import referenced_frame
from sr_writer.errors import InvalidContentError
from sr_writer.gsps import (
    LAYER_GRAYSCALE,
    LAYERS,
    build_presentation_states,
    computed_window,
    plan_presentation_states,
    srgb_icc_profile,
)
from sr_writer.io import write_dataset
from tests.conftest import require_tool
from tests.peers.dciodvfy import validate
from tests.peers.dcmtk import peer_env
from tests.sr_writer.explained import unexplained
from tests.sr_writer.samples import MODALITIES, TINY, content_for

EXPECTED_CLASS = {
    "CT": [GrayscaleSoftcopyPresentationStateStorage],
    "MR": [GrayscaleSoftcopyPresentationStateStorage],
    "CR": [GrayscaleSoftcopyPresentationStateStorage],
    "DX": [GrayscaleSoftcopyPresentationStateStorage],
    "US": [ColorSoftcopyPresentationStateStorage] * 2,
    "SC": [ColorSoftcopyPresentationStateStorage],
}


@pytest.fixture(scope="module")
def states(built, tmp_path_factory) -> dict[str, list[Path]]:
    """Bilingual presentation states of every modality, written to disk."""
    folder = tmp_path_factory.mktemp("ps")
    result = {}
    for modality in MODALITIES:
        sample = built[modality].sample
        datasets = build_presentation_states(
            [content_for(sample, "en"), content_for(sample, "zh")], sample.by_sop_uid
        )
        result[modality] = [
            write_dataset(ds, folder / f"{modality}_{index}.dcm") for index, ds in enumerate(datasets)
        ]
    return result


@pytest.mark.peers
@pytest.mark.parametrize("modality", MODALITIES)
def test_dciodvfy_zero_errors_only_explained_warnings(states, modality: str) -> None:
    require_tool("dciodvfy")
    assert states[modality], "every sample has annotated images"
    for path in states[modality]:
        errors, warnings = validate(path)
        print(f"{modality} {path.name}: {len(errors)} errors, warnings: {warnings}")
        assert errors == []
        assert unexplained(warnings) == []


@pytest.mark.parametrize("modality", MODALITIES)
def test_boxes_labels_and_tracking_per_language(built, states, modality: str) -> None:
    sample = built[modality].sample
    contents = {language: content_for(sample, language) for language in ("en", "zh")}
    paths = states[modality]
    assert [pydicom.dcmread(p).SOPClassUID for p in paths] == EXPECTED_CLASS[modality]
    for path in paths:
        ps = pydicom.dcmread(path)
        image = sample.by_sop_uid[ps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID]
        assert ps.SpecificCharacterSet == "ISO_IR 192"
        assert ps.Modality == "PR"
        assert ps.ContentLabel == "AI_UNVERIFIED"
        assert ps.SeriesDescription == "MedRegA AI boxes (en+zh), unverified"
        assert [layer.GraphicLayer for layer in ps.GraphicLayerSequence] == ["MEDREGA_EN", "MEDREGA_ZH"]
        for language, content in contents.items():
            regions = [r for r in content.regions if r.referenced_sop_instance_uid == image.SOPInstanceUID]
            annotations = [a for a in ps.GraphicAnnotationSequence if a.GraphicLayer == LAYERS[language][0]]
            boxes = [(a, g) for a in annotations for g in a.GraphicObjectSequence]
            texts = [t.UnformattedTextValue for a in annotations for t in a.TextObjectSequence]
            assert len(boxes) == len(regions)
            for region, (annotation, box) in zip(regions, boxes):
                assert box.GraphicType == "POLYLINE" and box.GraphicAnnotationUnits == "PIXEL"
                points = [float(v) for v in box.GraphicData]
                assert points[:2] == points[-2:] and len(points) == 10
                x1, y1, x2, y2 = region.pixels
                assert (min(points[0::2]), min(points[1::2]), max(points[0::2]), max(points[1::2])) == pytest.approx(
                    (x1, y1, x2, y2), abs=1e-3
                )
                assert box.TrackingUID == region.tracking_uid
                frame = referenced_frame(image, region.frame_number)
                referenced = annotation.ReferencedImageSequence[0]
                if frame is None:
                    assert "ReferencedFrameNumber" not in referenced
                else:
                    assert int(referenced.ReferencedFrameNumber) == frame
            assert texts == [coding.finding_code(r.label, r.code, language).meaning for r in regions]
    assert "右肺" in "".join(
        t.UnformattedTextValue
        for p in paths
        for a in pydicom.dcmread(p).GraphicAnnotationSequence
        for t in a.TextObjectSequence
    )


def test_same_input_same_bytes(built, states, tmp_path) -> None:
    sample = built["US"].sample
    again = build_presentation_states([content_for(sample, "en"), content_for(sample, "zh")], sample.by_sop_uid)
    for ds, path in zip(again, states["US"], strict=True):
        assert write_dataset(ds, tmp_path / path.name).read_bytes() == path.read_bytes()


def test_one_language_gives_one_layer_and_its_own_uids(built, states) -> None:
    sample = built["CT"].sample
    (ps,) = build_presentation_states(content_for(sample, "zh"), sample.by_sop_uid)
    assert [layer.GraphicLayer for layer in ps.GraphicLayerSequence] == ["MEDREGA_ZH"]
    assert ps.SeriesDescription == "MedRegA AI boxes (zh), unverified"
    assert ps.SOPInstanceUID != pydicom.dcmread(states["CT"][0]).SOPInstanceUID


def test_test_model_is_named(built) -> None:
    sample = built["MR"].sample
    (ps,) = build_presentation_states(content_for(sample, "en", algorithm=TINY), sample.by_sop_uid)
    assert ps.SeriesDescription == "tiny-random-internvl test boxes (en), unverified"
    assert ps.ContentLabel == "TEST_UNVERIFIED"
    assert "MedRegA" not in ps.ContentDescription


def test_no_regions_no_presentation_state(built) -> None:
    sample = built["CT"].sample
    assert build_presentation_states(content_for(sample, "en", regions=[]), sample.by_sop_uid) == []


def test_palette_images_are_skipped_with_a_reason(built, caplog) -> None:
    sample = built["US"].sample
    palette = {uid: pydicom.Dataset(ds) for uid, ds in sample.by_sop_uid.items()}
    first = next(iter(palette))
    palette[first].PhotometricInterpretation = "PALETTE COLOR"
    palette[first].SamplesPerPixel = 1
    plan = plan_presentation_states(content_for(sample, "en"), palette)
    assert [s.sop_instance_uid for s in plan.skipped] == [first]
    assert "PALETTE COLOR" in plan.skipped[0].reason
    assert len(plan.datasets) == 1
    with caplog.at_level(logging.WARNING, logger="sr_writer.gsps"):
        assert len(build_presentation_states(content_for(sample, "en"), palette)) == 1
    assert first in caplog.text


def test_missing_source_image_is_an_error(built) -> None:
    sample = built["CT"].sample
    with pytest.raises(InvalidContentError, match="was not given"):
        build_presentation_states(content_for(sample, "en"), {})


@pytest.mark.parametrize("what", ["version", "language"])
def test_contents_must_be_one_study_version_one_per_language(built, what: str) -> None:
    sample = built["CT"].sample
    en = content_for(sample, "en")
    other = dataclasses.replace(en, study_version=2) if what == "version" else en
    with pytest.raises(InvalidContentError):
        build_presentation_states([en, other], sample.by_sop_uid)


def test_srgb_profile_is_stable_and_an_input_profile() -> None:
    data = srgb_icc_profile()
    assert data == srgb_icc_profile()
    assert data[12:16] == b"scnr" and data[16:20] == b"RGB "
    profile = ImageCms.ImageCmsProfile(io.BytesIO(data))
    assert "sRGB" in ImageCms.getProfileDescription(profile)


@pytest.mark.peers
def test_dcmtk_presentation_state_checker_passes(built, tmp_path) -> None:
    """dcmpschk's semantic check passes; its value checker only knows ASCII/Latin-1,
    so this uses an English, ASCII-named sample (the DX patient is Doe^Jane)."""
    require_tool("dcmpschk")
    sample = built["DX"].sample
    content = dataclasses.replace(content_for(sample, "en"), institution_name="Test Hospital")
    (ps,) = build_presentation_states(content, sample.by_sop_uid)
    path = write_dataset(ps, tmp_path / "ps.dcm")
    result = subprocess.run(["dcmpschk", str(path)], capture_output=True, text=True, env=peer_env(), timeout=60)
    output = result.stdout + result.stderr
    assert "Test passed." in output and "E:" not in output, output


def _render_with_dcmtk(image: Path, state: Path, out: Path) -> np.ndarray:
    """DCMTK's presentation state renderer: the image through the state's Modality/VOI/Presentation LUTs."""
    run = subprocess.run([require_tool("dcmp2pgm"), "-p", str(state), str(image), str(out)],
                         capture_output=True, text=True, timeout=60, env=peer_env())
    assert run.returncode == 0, run.stdout + run.stderr
    return np.array(Image.open(out))


@pytest.mark.peers
def test_ct_without_a_window_displays_with_the_computed_voi(built, states, tmp_path) -> None:
    """The test CT has no window: without the state's VOI it shows 9 grey levels, with it > 100."""
    sample = built["CT"].sample
    assert "WindowCenter" not in sample.datasets[0]
    [state] = states["CT"]
    ps = pydicom.dcmread(state)
    voi = ps.SoftcopyVOILUTSequence[0]
    preset = ct_preset_for(sample.datasets[0].get("BodyPartExamined"))
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == CT_PRESETS[preset]
    assert voi.VOILUTFunction == "LINEAR" and voi.WindowCenterWidthExplanation.startswith("MEDREGA CT")
    shown = _render_with_dcmtk(sample.paths[0], state, tmp_path / "with_state.pgm")
    assert len(np.unique(shown)) > 100
    without = subprocess.run([require_tool("dcmp2pgm"), str(sample.paths[0]), str(tmp_path / "plain.pgm")],
                             capture_output=True, timeout=60, env=peer_env())
    assert without.returncode == 0
    assert len(np.unique(np.array(Image.open(tmp_path / "plain.pgm")))) < 20  # what the issue saw


@pytest.mark.parametrize("modality", ["MR", "CR", "DX"])
def test_other_grayscale_images_keep_or_get_a_window(built, states, modality: str) -> None:
    sample = built[modality].sample
    for path in states[modality]:
        ps = pydicom.dcmread(path)
        image = sample.by_sop_uid[ps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID]
        voi = ps.SoftcopyVOILUTSequence[0]
        computed = computed_window(image)
        if computed is None:  # the image has its own window: the state carries it
            own = image.WindowCenter
            assert float(voi.WindowCenter) == float(own[0] if isinstance(own, pydicom.multival.MultiValue) else own)
        else:
            assert (float(voi.WindowCenter), float(voi.WindowWidth)) == pytest.approx(computed[:2])
            assert voi.WindowCenterWidthExplanation.startswith("MEDREGA AUTO")


@pytest.mark.peers
def test_layers_are_told_apart_in_grayscale_and_boxes_render(built, states, tmp_path) -> None:
    """Each layer has a Recommended Display Grayscale Value (EN and ZH differ); drawn on DCMTK's
    rendering of the CT through the state, every box outline has its layer's grey."""
    sample = built["CT"].sample
    [state] = states["CT"]
    ps = pydicom.dcmread(state)
    grey = {layer.GraphicLayer: int(layer.GraphicLayerRecommendedDisplayGrayscaleValue)
            for layer in ps.GraphicLayerSequence}
    assert grey == {LAYERS[lang][0]: LAYER_GRAYSCALE[lang] for lang in ("en", "zh")}
    assert abs(grey["MEDREGA_EN"] - grey["MEDREGA_ZH"]) >= 0x4000
    shown = _render_with_dcmtk(sample.paths[0], state, tmp_path / "ct.pgm")
    drawn = 0
    for layer, value16 in grey.items():  # one layer at a time, as a viewer showing one language
        value = value16 >> 8  # P-value (16 bit) -> 8-bit display value
        canvas = Image.fromarray(shown)
        draw = ImageDraw.Draw(canvas)
        edges = []
        for annotation in ps.GraphicAnnotationSequence:
            if annotation.GraphicLayer != layer:
                continue
            for graphic in annotation.GraphicObjectSequence:
                assert graphic.GraphicAnnotationUnits == "PIXEL" and graphic.GraphicType == "POLYLINE"
                points = [(float(x), float(y)) for x, y in zip(graphic.GraphicData[0::2], graphic.GraphicData[1::2])]
                draw.line(points, fill=value, width=1)
                edges.append((int(round((points[0][0] + points[1][0]) / 2)), int(round(points[0][1]))))
        canvas.save(tmp_path / f"ct_{layer}.png")
        pixels = np.array(canvas)
        assert edges
        for column, row in edges:  # the top edge, within the pixel the line was rounded to
            assert value in pixels[max(row - 1, 0):row + 2, column], (layer, column, row)
        assert len(np.unique(pixels)) > 100
        drawn += len(edges)
    assert drawn == len(content_for(sample, "en").regions) + len(content_for(sample, "zh").regions)
