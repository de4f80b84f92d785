"""Fallbacks for destinations without Comprehensive 3D SR: same content, closest class."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
)

from sr_writer.errors import NoAcceptedSRClassError, NotConvertibleError
from sr_writer.fallback import (
    describe_region,
    fallback_document,
    fallback_uid,
    to_basic_text_sr,
    to_comprehensive_sr,
    to_enhanced_sr,
)
from sr_writer.io import write_dataset
from sr_writer.readback import read_report
from sr_writer.report import build_sr
from tests.conftest import require_tool
from tests.peers.dciodvfy import validate
from tests.sr_writer.explained import unexplained
from tests.sr_writer.samples import MODALITIES, content_for
from tests.sr_writer.test_dsrdump import dsrdump

#: keyed by SOP Class UID, looked up by the str the tests are parametrized with
CONVERTERS: dict[str, Callable[[Dataset], Dataset]] = {
    ComprehensiveSRStorage: to_comprehensive_sr,
    EnhancedSRStorage: to_enhanced_sr,
    BasicTextSRStorage: to_basic_text_sr,
}


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []) or [])


def _sr(built, modality: str = "CT", language: str = "en", scenario: str = "regions") -> pydicom.Dataset:
    return pydicom.dcmread(built[modality].paths[(scenario, language)])


@pytest.fixture(scope="module")
def fallbacks(built, tmp_path_factory) -> dict[tuple[str, str, str, str], Path]:
    """(modality, scenario, language, class) -> written fallback file."""
    folder = tmp_path_factory.mktemp("fallback")
    result = {}
    for modality in MODALITIES:
        for scenario in ("regions", "empty"):
            for language in ("en", "zh"):
                ds = _sr(built, modality, language, scenario)
                for sop_class, convert in CONVERTERS.items():
                    name = f"{modality}_{scenario}_{language}_{sop_class}.dcm"
                    result[(modality, scenario, language, sop_class)] = write_dataset(convert(ds), folder / name)
    return result


@pytest.mark.peers
@pytest.mark.parametrize("modality", MODALITIES)
def test_fallbacks_validate_and_dsrdump_accepts_them(fallbacks, modality: str) -> None:
    require_tool("dciodvfy")
    for (m, scenario, language, sop_class), path in fallbacks.items():
        if m != modality:
            continue
        errors, warnings = validate(path)
        print(f"{modality} {scenario} {language} {sop_class}: {len(errors)} errors, warnings {warnings}")
        assert errors == [], (scenario, language, sop_class)
        assert unexplained(warnings) == []
        dsrdump(path)  # DCMTK checks the IOD's relationship constraints while reading


@pytest.mark.parametrize("sop_class", [ComprehensiveSRStorage, EnhancedSRStorage])
def test_same_tree_in_comprehensive_and_enhanced(built, sop_class: str) -> None:
    original = _sr(built, "US", "zh")
    converted = CONVERTERS[sop_class](original)
    assert converted.SOPClassUID == sop_class
    assert converted.SOPInstanceUID == fallback_uid(original.SOPInstanceUID, sop_class)
    assert converted.file_meta.MediaStorageSOPInstanceUID == converted.SOPInstanceUID
    assert converted.file_meta.MediaStorageSOPClassUID == sop_class
    assert converted.ContentSequence == original.ContentSequence
    assert converted.SeriesInstanceUID == original.SeriesInstanceUID
    assert read_report(converted).regions == read_report(original).regions
    assert original.SOPClassUID == Comprehensive3DSRStorage  # the original is untouched
    assert CONVERTERS[sop_class](original).SOPInstanceUID == converted.SOPInstanceUID


def test_basic_text_keeps_every_region_as_text(built) -> None:
    for language in ("en", "zh"):
        original = _sr(built, "US", language)
        report = read_report(original)
        basic = to_basic_text_sr(original)
        assert basic.SOPClassUID == BasicTextSRStorage
        assert basic.ContentTemplateSequence[0].TemplateIdentifier == "2000"
        assert basic.ConceptNameCodeSequence[0].CodeValue == "18748-4"
        assert "AI" in basic.ConceptNameCodeSequence[0].CodeMeaning
        items = list(_walk(basic.ContentSequence))
        assert {i.ValueType for i in items} <= {"CONTAINER", "TEXT", "CODE", "UIDREF", "IMAGE"}
        texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
        for text in report.texts:
            assert text in texts
        for region in report.regions:
            (rendered,) = [t for t in texts if region.tracking_uid in t]
            assert rendered == describe_region(region, language)
            assert region.finding[2] in rendered and region.finding[0] in rendered
            assert region.referenced_sop_instance_uid in rendered
            if region.frame_numbers:
                assert (f"frame {region.frame_numbers[0]}" if language == "en" else f"第 {region.frame_numbers[0]} 帧") in rendered
        images = [i for i in items if i.ValueType == "IMAGE"]
        assert len(images) == len(report.regions)
        frames = {str(i.ReferencedSOPSequence[0].get("ReferencedFrameNumber", "")) for i in images}
        assert {"1", "30", ""} <= frames  # US multi-frame: frames 1 and 30; single-frame: none
        assert basic.VerificationFlag == "UNVERIFIED" and basic.CompletionFlag == original.CompletionFlag
        # the local code became text: its scheme is no longer declared
        assert "CodingSchemeIdentificationSequence" not in basic


def test_basic_text_renders_box_and_sizes(built) -> None:
    region = read_report(_sr(built, "CR", "en")).regions[0]
    text = describe_region(region, "en")
    x1, y1, x2, y2 = region.box
    assert f"box x {x1:g}-{x2:g}, y {y1:g}-{y2:g} (pixels)" in text
    assert "width " in text and " mm2" in text
    assert describe_region(region, "zh").startswith(f"{region.finding[2]} [SCT {region.finding[0]}]：框")


def test_fallback_document_picks_the_closest_accepted_class(built) -> None:
    original = _sr(built)
    everything = [Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage, BasicTextSRStorage]
    assert fallback_document(original, everything) is original
    assert fallback_document(original, everything[1:]).SOPClassUID == ComprehensiveSRStorage
    assert fallback_document(original, everything[2:]).SOPClassUID == EnhancedSRStorage
    assert fallback_document(original, [BasicTextSRStorage, CTImageStorage]).SOPClassUID == BasicTextSRStorage
    with pytest.raises(NoAcceptedSRClassError):
        fallback_document(original, [CTImageStorage])
    with pytest.raises(NoAcceptedSRClassError):
        fallback_document(original, [])


def test_presentation_states_have_no_fallback(built) -> None:
    ps = pydicom.Dataset()
    ps.SOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    assert fallback_document(ps, [GrayscaleSoftcopyPresentationStateStorage]) is ps
    with pytest.raises(NotConvertibleError):
        fallback_document(ps, [BasicTextSRStorage])


def test_scoord3d_and_by_reference_are_refused(built) -> None:
    original = _sr(built)
    three_d = pydicom.Dataset(original)
    three_d.ContentSequence = pydicom.Sequence([pydicom.Dataset(i) for i in original.ContentSequence])
    region = next(i for i in _walk(three_d.ContentSequence) if i.get("ValueType") == "SCOORD")
    region.ValueType = "SCOORD3D"
    with pytest.raises(NotConvertibleError, match="SCOORD3D"):
        to_enhanced_sr(three_d)
    with pytest.raises(NotConvertibleError, match="SCOORD3D"):
        to_comprehensive_sr(three_d)
    region.ValueType = "SCOORD"
    region.ReferencedContentItemIdentifier = [1, 1]
    with pytest.raises(NotConvertibleError, match="by-reference"):
        to_enhanced_sr(three_d)
    assert to_comprehensive_sr(three_d).SOPClassUID == ComprehensiveSRStorage


def test_predecessors_point_at_the_fallback_of_the_same_class(built) -> None:
    first = _sr(built, "CT", "en")
    previous = (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPClassUID, first.SOPInstanceUID)
    second = build_sr(dataclasses.replace(content_for(built["CT"].sample, "en"), study_version=2, predecessor=[previous]))
    for sop_class, convert in CONVERTERS.items():
        converted = convert(second)
        reference = converted.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert reference.ReferencedSOPClassUID == sop_class
        assert reference.ReferencedSOPInstanceUID == convert(first).SOPInstanceUID
    assert second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID


@pytest.mark.peers
def test_dsrdump_shows_chinese_in_the_basic_text_fallback(fallbacks) -> None:
    out = dsrdump(fallbacks[("CT", "regions", "zh", BasicTextSRStorage)])
    assert "Basic Text SR Document" in out
    assert "右肺 [SCT 3341006]：框" in out and "影像诊断报告（AI生成，未经审核）" in out
    assert "所见：双侧少量胸腔积液。" in out


def test_other_documents_are_refused(built) -> None:
    foreign = pydicom.dcmread(Path(pydicom.__file__).parent / "data" / "test_files" / "test-SR.dcm")
    foreign.SOPClassUID = Comprehensive3DSRStorage
    with pytest.raises(NotConvertibleError):
        to_basic_text_sr(foreign)
