"""highdicom reads every SR back, and findings, boxes, languages and tracking UIDs equal the input."""

from __future__ import annotations

import pydicom
import pytest
from highdicom.sr import Comprehensive3DSR, MeasurementReport, srread

from sr_writer import coding
from sr_writer.content import referenced_frame
from sr_writer.readback import read_report
from sr_writer.report import box_measurements_mm
from tests.sr_writer.samples import MODALITIES, content_for, regions_for

FLOAT32_TOLERANCE = 1e-3  # graphic data is FL (float32)


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("language", ["en", "zh"])
def test_regions_read_back_equal_what_was_written(built, modality: str, language: str) -> None:
    sample = built[modality].sample
    path = built[modality].paths[("regions", language)]
    written = content_for(sample, language)

    sr = srread(path)
    assert isinstance(sr, Comprehensive3DSR)
    assert isinstance(sr.content, MeasurementReport)  # read as TID 1500
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(written.regions)

    report = read_report(pydicom.dcmread(path))
    assert report.language == (language, "RFC5646", "English" if language == "en" else "Chinese")
    assert report.texts == tuple(written.report_texts)
    by_sop = {str(ds.SOPInstanceUID): ds for ds in sample.datasets}
    for region, read in zip(written.regions, report.regions, strict=True):
        assert read.tracking_uid == region.tracking_uid
        assert read.tracking_identifier == region.tracking_identifier
        expected = coding.finding_code(region.label, region.code, language)
        assert read.finding == (expected.value, expected.scheme_designator, expected.meaning)
        assert read.graphic_type == "POLYLINE"
        assert len(read.points) == 5 and read.points[0] == read.points[-1]
        assert read.box == pytest.approx(region.pixels, abs=FLOAT32_TOLERANCE)
        assert read.referenced_sop_instance_uid == region.referenced_sop_instance_uid
        assert read.referenced_sop_class_uid == region.referenced_sop_class_uid
        frame = referenced_frame(by_sop[region.referenced_sop_instance_uid], region.frame_number)
        assert read.frame_numbers == ((frame,) if frame else ())
        assert read.label == expected.meaning  # the first Comment: what OHIF labels the box with
        assert read.description == region.description
        assert read.algorithm_name == written.algorithm.name
        sizes = box_measurements_mm(region)
        if sizes is None:
            assert read.measurements == {}
        else:
            assert read.measurements == {
                "Width": (pytest.approx(sizes[0]), "mm"),
                "Height": (pytest.approx(sizes[1]), "mm"),
                "Area": (pytest.approx(sizes[2]), "mm2"),
            }


@pytest.mark.parametrize("modality", MODALITIES)
def test_both_languages_share_tracking_uids_box_by_box(built, modality: str) -> None:
    en = read_report(pydicom.dcmread(built[modality].paths[("regions", "en")]))
    zh = read_report(pydicom.dcmread(built[modality].paths[("regions", "zh")]))
    assert [r.tracking_uid for r in en.regions] == [r.tracking_uid for r in zh.regions]
    assert len({r.tracking_uid for r in en.regions}) == len(en.regions)
    for a, b in zip(en.regions, zh.regions):
        assert a.finding[:2] == b.finding[:2] or a.finding[1] == b.finding[1] == coding.LOCAL_SCHEME
        assert a.box == b.box


def test_expected_codes_for_known_labels(built) -> None:
    zh = read_report(pydicom.dcmread(built["CT"].paths[("regions", "zh")]))
    findings = [r.finding for r in zh.regions]
    assert ("3341006", "SCT", "右肺") in findings
    assert ("44029006", "SCT", "左肺") in findings
    assert ("60046008", "SCT", "胸腔积液") in findings
    assert ("363418001", "SCT", "胰腺癌") in findings
    local = [f for f in findings if f[1] == coding.LOCAL_SCHEME]
    assert local == [(coding.local_code("奇怪阴影").value, coding.LOCAL_SCHEME, "奇怪阴影")]


def test_multi_frame_regions_reference_their_frames(built) -> None:
    sample = built["US"].sample
    report = read_report(pydicom.dcmread(built["US"].paths[("regions", "en")]))
    multiframe = [ds for ds in sample.datasets if int(ds.get("NumberOfFrames", 1)) > 1][0]
    frames = {r.frame_numbers for r in report.regions if r.referenced_sop_instance_uid == multiframe.SOPInstanceUID}
    assert frames == {(1,), (int(multiframe.NumberOfFrames),)}
    assert len(regions_for(sample, "en")) == len(report.regions)


@pytest.mark.parametrize("scenario", ["text-only", "empty"])
def test_documents_without_regions_read_back(built, scenario: str) -> None:
    for language in ("en", "zh"):
        path = built["MR"].paths[(scenario, language)]
        sr = srread(path)
        assert isinstance(sr.content, MeasurementReport)  # read as TID 1500
        assert sr.content.get_planar_roi_measurement_groups() == []
        report = read_report(pydicom.dcmread(path))
        assert report.regions == ()
        if scenario == "text-only":
            assert report.texts == tuple(content_for(built["MR"].sample, language).report_texts)
        else:
            assert len(report.texts) == 1 and report.texts[0]
