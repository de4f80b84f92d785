"""The SR header and tree: AIR parts, honesty flags, determinism, versions, characters."""

from __future__ import annotations

import dataclasses
import datetime

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage

from common.uids import derive_uid
from sr_writer import coding
from sr_writer.content import ReportContent
from sr_writer.header import algorithm_device_uid
from sr_writer.io import write_dataset
from sr_writer.readback import read_report
from sr_writer.report import build_sr, sr_uids
from tests.sr_writer.samples import MEDREGA, TINY, WHEN, content_for


def _content(built, modality: str = "CT", language: str = "en", **changes) -> ReportContent:
    return dataclasses.replace(content_for(built[modality].sample, language), **changes)


def _read(built, modality: str, scenario: str, language: str) -> pydicom.Dataset:
    return pydicom.dcmread(built[modality].paths[(scenario, language)])


def test_header_says_unverified_ai_result(built) -> None:
    ds = _read(built, "CT", "regions", "en")
    assert ds.SOPClassUID == Comprehensive3DSRStorage
    assert ds.Modality == "SR"
    assert ds.VerificationFlag == "UNVERIFIED"
    assert ds.PreliminaryFlag == "PRELIMINARY"
    assert ds.CompletionFlag == "COMPLETE"
    assert "VerifyingObserverSequence" not in ds
    assert "AuthorObserverSequence" not in ds
    assert ds.Manufacturer == "medrega-gateway"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert ds.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurement Report - AI-generated, unverified"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert ds.SeriesDescription == "MedRegA AI results (en), unverified"
    assert ds.SeriesNumber == 9011
    zh = _read(built, "CT", "regions", "zh")
    assert zh.SeriesDescription == "MedRegA AI results (zh), unverified"
    assert zh.ConceptNameCodeSequence[0].CodeMeaning == "影像测量报告（AI生成，未经审核）"
    assert zh.SeriesNumber == 9012
    assert zh.SeriesInstanceUID != ds.SeriesInstanceUID


def test_no_person_observer_only_the_device(built) -> None:
    ds = _read(built, "MR", "regions", "en")
    observer_types = [
        item.ConceptCodeSequence[0].CodeMeaning
        for item in ds.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "121005"
    ]
    assert observer_types == ["Device"]
    assert read_report(ds).device_observer_uid == algorithm_device_uid(MEDREGA)


def test_test_models_never_claim_medrega(built) -> None:
    for language in ("en", "zh"):
        ds = _read(built, "CR", "test-model", language)
        assert ds.SeriesDescription == f"tiny-random-internvl test results ({language}), unverified"
        title = ds.ConceptNameCodeSequence[0].CodeMeaning
        assert "MedRegA" not in title and ("test model" in title or "测试模型" in title)
        names = {r.algorithm_name for r in read_report(ds).regions}
        assert names == {TINY.name}
        assert "not MedRegA" in TINY.name


def test_partial_results_are_flagged_partial(built) -> None:
    assert build_sr(_content(built, complete=False)).CompletionFlag == "PARTIAL"


def test_contributing_equipment_describes_the_algorithm(built) -> None:
    ds = _read(built, "CT", "regions", "en")
    items = [
        item for item in ds.ContributingEquipmentSequence if item.ManufacturerModelName == MEDREGA.name
    ]
    assert len(items) == 1
    item = items[0]
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "DCM"
    assert item.Manufacturer == MEDREGA.manufacturer
    assert item.SoftwareVersions == MEDREGA.version
    assert item.DeviceUID == algorithm_device_uid(MEDREGA)
    assert MEDREGA.weights_id in item.ContributionDescription
    # the CT sample names its scanner: it is listed as acquisition equipment
    purposes = [i.PurposeOfReferenceCodeSequence[0].CodeValue for i in ds.ContributingEquipmentSequence]
    assert purposes[0] == "109101"


def test_device_uid_changes_with_the_weights_only() -> None:
    other_weights = dataclasses.replace(MEDREGA, weights_id="sha256:" + "ef" * 28)
    assert algorithm_device_uid(other_weights) != algorithm_device_uid(MEDREGA)
    assert algorithm_device_uid(dataclasses.replace(MEDREGA)) == algorithm_device_uid(MEDREGA)


def test_same_input_gives_the_same_bytes(built, tmp_path) -> None:
    a = write_dataset(build_sr(_content(built, "US", "zh")), tmp_path / "a.dcm")
    b = write_dataset(build_sr(_content(built, "US", "zh")), tmp_path / "b.dcm")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() == built["US"].paths[("regions", "zh")].read_bytes()


def test_uids_are_derived_from_study_version_and_language(built) -> None:
    ds = _read(built, "CT", "regions", "en")
    series_uid, sop_uid = sr_uids(ds.StudyInstanceUID, 1, "en")
    assert (ds.SeriesInstanceUID, ds.SOPInstanceUID) == (series_uid, sop_uid)
    assert sop_uid == derive_uid(ds.StudyInstanceUID, "1", "en", "sr")
    version2 = build_sr(_content(built, study_version=2))
    assert version2.SOPInstanceUID != sop_uid and version2.SeriesInstanceUID != series_uid
    assert version2.SeriesDescription == "MedRegA AI results (en) v2, unverified"
    assert version2.SeriesNumber == 9021


def test_dates_come_from_content_datetime(built) -> None:
    ds = _read(built, "DX", "regions", "en")
    assert (ds.ContentDate, ds.ContentTime) == ("20250304", "102030.123000")
    assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == ("20250304", "102030.123000")
    later = build_sr(_content(built, "DX", content_datetime=WHEN + datetime.timedelta(days=1)))
    assert str(later.ContentDate) == "20250305"
    stamped = [str(i.ContributionDateTime) for i in later.ContributingEquipmentSequence if "ContributionDateTime" in i]
    assert len(stamped) == 2 and all(s.startswith("20250305102030") for s in stamped)  # algorithm, highdicom


def test_new_version_references_the_previous_sr(built) -> None:
    first = _read(built, "CT", "regions", "en")
    previous = (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPClassUID, first.SOPInstanceUID)
    second = build_sr(_content(built, study_version=2, predecessor=[previous]))
    study = second.PredecessorDocumentsSequence[0]
    assert study.StudyInstanceUID == first.StudyInstanceUID
    series = study.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in first


def test_evidence_lists_every_analysed_instance(built) -> None:
    ds = _read(built, "US", "text-only", "en")  # no region references anything
    listed = {
        instance.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for instance in series.ReferencedSOPSequence
    }
    assert listed == {str(d.SOPInstanceUID) for d in built["US"].sample.datasets}
    assert len(listed) == 2


def test_patient_and_study_copied_and_names_recoded_to_utf8(built) -> None:
    source = built["CT"].sample.datasets[0]
    raw = built["CT"].paths[("regions", "zh")].read_bytes()
    assert "Müller^Jürgen".encode("utf-8") in raw
    assert "Müller^Jürgen".encode("latin-1") not in raw
    ds = _read(built, "CT", "regions", "zh")
    for keyword in ("PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "StudyDate"):
        assert ds.get(keyword) == source.get(keyword), keyword
    assert str(ds.PatientName) == "Müller^Jürgen"
    cr = _read(built, "CR", "regions", "en")
    assert str(cr.PatientName) == "张^三"
    assert cr.InstitutionName == "Test Hospital 测试医院"


def test_procedure_reported_prefers_the_source_procedure_code(built) -> None:
    assert read_report(_read(built, "CR", "regions", "en")).procedures == (("24627-2", "LN", "Chest X-ray"),)
    assert read_report(_read(built, "MR", "regions", "en")).procedures == (
        ("113091000", "SCT", "Magnetic resonance imaging"),
    )
    assert read_report(_read(built, "SC", "regions", "en")).procedures == (
        ("363679005", "SCT", "Imaging procedure"),
    )


def test_local_scheme_declared_only_when_used(built) -> None:
    ds = _read(built, "CT", "regions", "en")
    declared = {item.CodingSchemeDesignator: item for item in ds.CodingSchemeIdentificationSequence}
    assert declared[coding.LOCAL_SCHEME].CodingSchemeName == coding.LOCAL_SCHEME_NAME
    coded_only = build_sr(_content(built, regions=[r for r in _content(built).regions if r.label != "odd shadow"]))
    schemes = {item.CodingSchemeDesignator for item in coded_only.get("CodingSchemeIdentificationSequence", [])}
    assert coding.LOCAL_SCHEME not in schemes


def test_worker_code_wins_over_the_table(built) -> None:
    content = _content(built)
    region = dataclasses.replace(content.regions[0], code=("RID1301", "RADLEX", "lung"))
    sr = build_sr(dataclasses.replace(content, regions=[region]))
    assert read_report(sr).regions[0].finding == ("RID1301", "RADLEX", "lung")


def test_sizes_use_row_spacing_for_height_and_column_spacing_for_width(built) -> None:
    content = _content(built, "CR")  # Pixel Spacing 0.5 (rows) x 0.4 (columns)
    region = dataclasses.replace(content.regions[0], pixels=(10.0, 20.0, 60.0, 40.0), pixel_spacing=(0.5, 0.4))
    read = read_report(build_sr(dataclasses.replace(content, regions=[region]))).regions[0]
    assert read.measurements == {"Width": (20.0, "mm"), "Height": (10.0, "mm"), "Area": (200.0, "mm2")}


def test_empty_study_says_nothing_was_found(built) -> None:
    en = read_report(_read(built, "SC", "empty", "en"))
    zh = read_report(_read(built, "SC", "empty", "zh"))
    assert en.texts == ("The algorithm reported no findings for this study.",)
    assert zh.texts == ("算法未对本检查报告任何发现。",)
    assert en.regions == zh.regions == ()
    ds = _read(built, "SC", "empty", "en")
    names = [item.ConceptNameCodeSequence[0].CodeValue for item in ds.ContentSequence]
    assert "126010" not in names  # no empty Imaging Measurements container


def test_long_labels_fit_code_meaning_in_utf8_bytes(built) -> None:
    content = _content(built, "CT", "zh")
    label = "非常长的中文标签" * 10
    region = dataclasses.replace(content.regions[0], label=label)
    read = read_report(build_sr(dataclasses.replace(content, regions=[region]))).regions[0]
    assert read.finding[1] == coding.LOCAL_SCHEME
    assert len(read.finding[2].encode("utf-8")) <= 64
    assert read.finding[2].endswith("...") and label.startswith(read.finding[2][:-3])


@pytest.mark.peers
def test_sources_without_type2_attributes_still_give_valid_objects(built, tmp_path) -> None:
    from sr_writer.gsps import build_presentation_states
    from tests.conftest import require_tool
    from tests.peers.dciodvfy import validate
    from tests.sr_writer.explained import unexplained

    require_tool("dciodvfy")
    sample = built["MR"].sample
    dropped = ("AccessionNumber", "StudyID", "PatientBirthDate", "ReferringPhysicianName", "PatientSex")

    def strip(ds: pydicom.Dataset) -> pydicom.Dataset:
        copy = pydicom.Dataset(ds)
        for keyword in dropped:
            if keyword in copy:
                delattr(copy, keyword)
        return copy

    content = dataclasses.replace(_content(built, "MR"), evidence=[strip(h) for h in sample.headers])
    sr = build_sr(content)
    (ps,) = build_presentation_states(content, {uid: strip(ds) for uid, ds in sample.by_sop_uid.items()})
    for ds, name in ((sr, "sr.dcm"), (ps, "ps.dcm")):
        for keyword in dropped:
            assert keyword in ds and not ds[keyword].value, keyword
        errors, warnings = validate(write_dataset(ds, tmp_path / name))
        assert errors == [] and unexplained(warnings) == []


def test_timezone_of_content_datetime_is_recorded(built) -> None:
    when = WHEN.replace(tzinfo=datetime.timezone(datetime.timedelta(hours=8)))
    sr = build_sr(_content(built, content_datetime=when))
    assert (str(sr.ContentDate), str(sr.ContentTime)) == ("20250304", "102030.123000")
    assert sr.TimezoneOffsetFromUTC == "+0800"
    assert "TimezoneOffsetFromUTC" not in build_sr(_content(built))


@pytest.mark.parametrize("language", ["en", "zh"])
def test_one_language_tasks_texts_marked_coded_image_finding_and_notes(built, language: str) -> None:
    """Issue 14: a text in the other language carries its own TID 1204 Language of Content Item;
    a classification is a CODE Finding INFERRED FROM its image; truncation and left-out sentences
    are Comments (not findings) and the document is PARTIAL."""
    ds = pydicom.dcmread(built["CR"].paths[("one-language-tasks", language)])
    assert ds.CompletionFlag == "PARTIAL"
    evaluations = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations")
    items = list(evaluations.ContentSequence)

    def language_of(item):
        return next((c.ConceptCodeSequence[0].CodeValue for c in item.get("ContentSequence", [])
                     if c.ConceptNameCodeSequence[0].CodeValue == "121049"), None)

    coded = [i for i in items if i.ValueType == "CODE"]
    assert [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue) for i in coded] == [
        ("121071", "287272002")]
    assert coded[0].ConceptCodeSequence[0].CodeMeaning == ("Cardiomegaly" if language == "en" else "心脏增大")
    image = next(c for c in coded[0].ContentSequence if c.ValueType == "IMAGE")
    assert image.RelationshipType == "INFERRED FROM"
    texts = [(i.TextValue, language_of(i)) for i in items
             if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121071"]
    expected_marks = {"en": [None, "zh"], "zh": ["en", None]}[language]
    assert [mark for _, mark in texts] == expected_marks
    comments = [i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert len(comments) == 2 and "vindrcxr_train_cls" in comments[0]
    assert "Compared to prior, unchanged." in comments[1]
    assert ("prior study" in comments[1]) if language == "en" else ("既往检查" in comments[1])
    # region descriptions in English are marked in the Chinese SR only
    descriptions = [language_of(c) for group in _groups(ds) for c in group.ContentSequence
                    if c.ValueType == "TEXT" and c.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert set(descriptions) == ({None} if language == "en" else {None, "en"})


def _groups(ds):
    for item in ds.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements":
            yield from item.ContentSequence
