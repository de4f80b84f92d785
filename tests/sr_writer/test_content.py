"""validate_content rejects input that would give a wrong or misleading SR."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from sr_writer.content import validate_content
from sr_writer.errors import InvalidContentError
from sr_writer.report import build_sr
from tests.sr_writer.samples import content_for


@pytest.fixture(scope="module")
def good(built):
    return content_for(built["US"].sample, "en")


def _region(content, index: int = 0, **changes):
    return dataclasses.replace(content.regions[index], **changes)


def _with_regions(content, *regions):
    return dataclasses.replace(content, regions=list(regions))


def test_the_sample_is_valid(good) -> None:
    validate_content(good)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: dataclasses.replace(c, language="fr"), "language"),
        (lambda c: dataclasses.replace(c, evidence=[]), "evidence is empty"),
        (lambda c: dataclasses.replace(c, study_version=0), "study_version"),
        (lambda c: dataclasses.replace(c, report_texts="one string"), "sequence of strings"),
        (lambda c: dataclasses.replace(c, predecessor=[("1.2", "1.3", "1.4")]), "predecessor"),
        (lambda c: dataclasses.replace(c, predecessor=[("1.2", "1.3", "1.4", "not-a-uid")]), "predecessor UID"),
        (lambda c: _with_regions(c, _region(c, tracking_uid="1.2.x")), "Tracking UID"),
        (lambda c: _with_regions(c, c.regions[0], _region(c, 1, tracking_uid=c.regions[0].tracking_uid)),
         "used by two regions"),
        (lambda c: _with_regions(c, _region(c, referenced_sop_instance_uid="1.2.3.4")), "not in evidence"),
        (lambda c: _with_regions(c, _region(c, referenced_sop_class_uid="1.2.840.10008.5.1.4.1.1.2")),
         "differs from the evidence"),
        (lambda c: _with_regions(c, _region(c, frame_number=None)), "frame_number is required"),
        (lambda c: _with_regions(c, _region(c, frame_number=31)), "not in 1..30"),
        (lambda c: _with_regions(c, _region(c, pixels=(50.0, 10.0, 40.0, 20.0))), "not ordered"),
        (lambda c: _with_regions(c, _region(c, pixels=(-1.0, 10.0, 40.0, 20.0))), "not ordered"),
        (lambda c: _with_regions(c, _region(c, pixels=(1.0, 10.0, 321.0, 20.0))), "exceeds"),
        (lambda c: _with_regions(c, _region(c, label=" ")), "empty label"),
        (lambda c: _with_regions(c, _region(c, code=("1", "SCT", ""))), "code must be"),
        (lambda c: _with_regions(c, _region(c, pixel_spacing=(0.0, 1.0))), "pixel_spacing"),
    ],
)
def test_invalid_content_is_rejected(good, change, message: str) -> None:
    bad = change(good)
    with pytest.raises(InvalidContentError, match=message):
        validate_content(bad)
    with pytest.raises(InvalidContentError):
        build_sr(bad)


def test_single_frame_images_take_no_frame_number(built) -> None:
    content = content_for(built["CT"].sample, "en")
    validate_content(_with_regions(content, _region(content, frame_number=1)))
    with pytest.raises(InvalidContentError, match="single-frame"):
        validate_content(_with_regions(content, _region(content, frame_number=2)))


def test_a_multi_frame_image_of_one_frame_needs_no_frame_number(good) -> None:
    """A missing frame number of a one-frame multi-frame image means frame 1 (``referenced_frame``);
    validation compared the missing number itself with the frame count (a TypeError) before."""
    region = good.regions[0]
    evidence = []
    for ds in good.evidence:
        if ds.SOPInstanceUID == region.referenced_sop_instance_uid:
            ds = copy.deepcopy(ds)
            ds.NumberOfFrames = 1
        evidence.append(ds)
    one_frame = dataclasses.replace(good, evidence=evidence, regions=[_region(good, frame_number=None)])
    validate_content(one_frame)
    with pytest.raises(InvalidContentError, match=r"not in 1\.\.1"):
        validate_content(_with_regions(one_frame, _region(one_frame, frame_number=2)))


def test_evidence_from_two_studies_is_rejected(built) -> None:
    content = content_for(built["CT"].sample, "en")
    other = built["MR"].sample.headers[0]
    with pytest.raises(InvalidContentError, match="mixes studies"):
        validate_content(dataclasses.replace(content, evidence=[*content.evidence, other]))
