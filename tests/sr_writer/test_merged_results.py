"""A result read the same from several images of one series is one SR item referencing them all.

A CT volume gets the model run on a few slices; the report and the classification answer are about
the whole image and come out the same for each slice. The SR says each once, with an INFERRED FROM
IMAGE reference per slice (PS3.3 C.17.3), instead of one copy per slice (sr_writer.content.result_key).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pydicom
import pytest

from common.uids import derive_uid
from sr_writer.content import ImageFinding, ReportContent, Source, result_key
from sr_writer.io import write_dataset
from sr_writer.readback import ReadResult, read_report
from sr_writer.report import build_sr
from tests.peers.dciodvfy import validate
from tests.sr_writer.samples import content_for, make_sample
from tests.sr_writer.test_dsrdump import dsrdump

REPORT = "影像诊断：所示层面双肺纹理清晰，未见明确实变及结节影。影像结论：胸部CT所示层面未见明显异常。"
OTHER = "影像诊断：右肺下叶见一结节影。影像结论：右肺下叶结节。"
TASK = "report (ct_report_zh)"
FINDING = "Finding"


def _volume(tmp_path: Path, slices: int = 3) -> list[pydicom.Dataset]:
    """``slices`` CT images of one series (the bundled CT slice, moved along the patient's z axis)."""
    first = make_sample("CT", tmp_path).headers[0]
    out = []
    for index in range(slices):
        ds = copy.deepcopy(first)
        ds.SOPInstanceUID = derive_uid("merge-test", "slice", str(index))
        ds.InstanceNumber = index + 1
        position = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [position[0], position[1], position[2] + 5.0 * index]
        out.append(ds)
    return out


def _source(ds: pydicom.Dataset) -> Source:
    return (str(ds.SOPClassUID), str(ds.SOPInstanceUID), None)


def _content(tmp_path: Path, slices: list[pydicom.Dataset], texts: list[str], *,
             tasks: list[str | None] | None = None,
             image_findings: list[ImageFinding] | None = None) -> ReportContent:
    base = make_sample("CT", tmp_path)
    content = content_for(base, "zh", regions=[], texts=texts)
    return dataclasses.replace(
        content, evidence=slices, report_sources=[_source(ds) for ds in slices][: len(texts)],
        report_tasks=tasks if tasks is not None else [TASK] * len(texts),
        image_findings=image_findings or [],
    )


def _findings(tmp_path: Path, content: ReportContent) -> list[ReadResult]:
    """The Finding items of Qualitative Evaluations, read back from the written SR, which must be valid."""
    path = write_dataset(build_sr(content), tmp_path / "sr.dcm")
    errors, _ = validate(path)
    assert errors == []
    dsrdump(path)
    report = read_report(pydicom.dcmread(path))
    return [r for r in report.results if r.name[2] == FINDING]


def _instances(result: ReadResult) -> list[str]:
    return [uid for _, uid, _ in result.sources]


def test_identical_report_on_three_slices_is_one_item_referencing_the_three(tmp_path: Path) -> None:
    slices = _volume(tmp_path)
    # The same answer, once with a line break and spaces around it: still the same text.
    texts = [REPORT, f"  {REPORT}\n", REPORT]
    findings = _findings(tmp_path, _content(tmp_path, slices, texts))
    assert len(findings) == 1
    assert findings[0].text == REPORT
    assert _instances(findings[0]) == [str(ds.SOPInstanceUID) for ds in slices]
    assert all(cls == str(slices[0].SOPClassUID) for cls, _, _ in findings[0].sources)


def test_one_differing_report_gives_two_items(tmp_path: Path) -> None:
    slices = _volume(tmp_path)
    findings = _findings(tmp_path, _content(tmp_path, slices, [REPORT, OTHER, REPORT]))
    assert [f.text for f in findings] == [REPORT, OTHER]
    assert _instances(findings[0]) == [str(slices[0].SOPInstanceUID), str(slices[2].SOPInstanceUID)]
    assert _instances(findings[1]) == [str(slices[1].SOPInstanceUID)]


def test_same_text_of_other_tasks_or_series_stays_apart(tmp_path: Path) -> None:
    slices = _volume(tmp_path)
    slices[2].SeriesInstanceUID = derive_uid("merge-test", "other series")
    content = _content(tmp_path, slices, [REPORT, REPORT, REPORT],
                       tasks=[TASK, "report (other_train_rg)", TASK])
    findings = _findings(tmp_path, content)
    assert [_instances(f) for f in findings] == [[str(ds.SOPInstanceUID)] for ds in slices]


def test_same_code_from_one_task_is_one_item_with_every_image(tmp_path: Path) -> None:
    slices = _volume(tmp_path)
    cardiomegaly = ("287272002", "SCT", "心脏增大")
    coded = [
        ImageFinding(cardiomegaly, _source(slices[0]), "classification (chexpert_train_cls)"),
        ImageFinding(cardiomegaly, _source(slices[0]), "classification (vindrcxr_train_cls)"),
        ImageFinding(cardiomegaly, _source(slices[1]), "classification (chexpert_train_cls)"),
        ImageFinding(("60046008", "SCT", "胸腔积液"), _source(slices[2]), "classification (chexpert_train_cls)"),
    ]
    findings = _findings(tmp_path, _content(tmp_path, slices, [], image_findings=coded))
    assert [(f.code, _instances(f)) for f in findings] == [
        (cardiomegaly, [str(slices[0].SOPInstanceUID), str(slices[1].SOPInstanceUID)]),
        (cardiomegaly, [str(slices[0].SOPInstanceUID)]),  # another task: its own answer
        (("60046008", "SCT", "胸腔积液"), [str(slices[2].SOPInstanceUID)]),
    ]


def test_frames_of_one_multiframe_image_are_each_referenced(tmp_path: Path) -> None:
    """Two frames of one image that read the same: one item, an IMAGE reference per frame."""
    sample = make_sample("US", tmp_path)
    image = next(ds for ds in sample.headers if int(ds.get("NumberOfFrames", 1)) > 1)
    content = dataclasses.replace(
        content_for(sample, "en", regions=[], texts=["Normal.", "Normal."]),
        report_sources=[(str(image.SOPClassUID), str(image.SOPInstanceUID), 1),
                        (str(image.SOPClassUID), str(image.SOPInstanceUID), 2)],
        report_tasks=[TASK, TASK],
    )
    findings = _findings(tmp_path, content)
    assert len(findings) == 1
    assert [frames for _, _, frames in findings[0].sources] == [(1,), (2,)]


def test_result_key() -> None:
    def key(*, text: str | None = None, code: tuple[str, str, str] | None = None, language: str = "zh") -> object:
        return result_key(text=text, code=code, task=TASK, language=language, series_instance_uid="1.2.3")

    assert key(text="a  b\n") == key(text=" a b")
    assert key(text="a b") != key(text="a c")
    assert key(code=("1", "SCT", "one")) == key(code=("1", "SCT", "One"))
    assert key(text="a") != key(text="a", language="en")
    with pytest.raises(ValueError):
        key()
