"""Each report text says which image it was written from (TEXT INFERRED FROM IMAGE)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sr_writer.errors import InvalidContentError
from sr_writer.io import write_dataset
from sr_writer.report import build_sr
from tests.peers.dciodvfy import validate
from tests.sr_writer.samples import content_for, make_sample


def _items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


@pytest.mark.parametrize("modality", ["CT", "US"])
def test_report_texts_reference_their_image(tmp_path: Path, modality: str) -> None:
    sample = make_sample(modality, tmp_path)
    header = sample.headers[0]
    frame = 2 if int(header.get("NumberOfFrames", 1)) > 1 else None
    content = content_for(sample, "zh", regions=[], texts=["影像结论：未见异常。", "第二段"])
    content = dataclasses.replace(content, report_sources=[(header.SOPClassUID, header.SOPInstanceUID, frame), None])
    ds = build_sr(content)
    texts = [i for i in _items(ds) if i.ValueType == "TEXT" and i.TextValue in ("影像结论：未见异常。", "第二段")]
    assert len(texts) == 2
    first, second = texts
    image = first.ContentSequence[0]
    assert first.ContentSequence[0].RelationshipType == "INFERRED FROM" and image.ValueType == "IMAGE"
    ref = image.ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == header.SOPInstanceUID
    frames = ref.get("ReferencedFrameNumber")
    assert (None if frames is None else int(frames)) == frame
    assert "ContentSequence" not in second
    path = write_dataset(ds, tmp_path / "sr.dcm")
    errors, _ = validate(path)
    assert errors == []


def test_sources_must_line_up_with_texts(tmp_path: Path) -> None:
    sample = make_sample("CT", tmp_path)
    content = dataclasses.replace(content_for(sample, "en", texts=["a", "b"]), report_sources=[None])
    with pytest.raises(InvalidContentError):
        build_sr(content)
