"""The header reader: the fast Little Endian scan must agree with pydicom's parser."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_node import header
from dicom_node.header import HeaderError, read_header
from tests.dicom_node.corpus import sample

SAMPLES = sorted(p.name for p in sample("CT_small.dcm").parent.glob("*.dcm"))


def _outcome(path: Path):
    try:
        return read_header(path)
    except HeaderError as exc:
        return type(exc)


def _slow(monkeypatch):
    def refuse(head: bytes, complete: bool):
        raise header._Unusual

    monkeypatch.setattr(header, "_fast_parse", refuse)
    # and every value decoded by pydicom, not by the direct UI/IS/DS decoding
    monkeypatch.setattr(header, "_raw_text", lambda ds, keyword, vrs: None)


@pytest.mark.parametrize("name", SAMPLES)
def test_fast_scan_agrees_with_pydicom(name, monkeypatch):
    path = sample(name)
    fast = _outcome(path)
    _slow(monkeypatch)
    assert fast == _outcome(path)


def test_fast_scan_is_used_for_little_endian_and_not_for_big_endian(monkeypatch):
    calls = []
    real = header.read_partial
    monkeypatch.setattr(header, "read_partial", lambda *a, **k: calls.append(1) or real(*a, **k))
    read_header(sample("CT_small.dcm"))
    read_header(sample("JPEG2000.dcm"))
    read_header(sample("MR_small_implicit.dcm"))
    assert calls == []
    read_header(sample("MR_small_bigendian.dcm"))
    assert calls == [1]


def test_header_beyond_the_first_64_kib_is_read_from_the_file(tmp_path):
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.ImageComments = "x" * 70000  # (0020,4000) before Rows/Columns
    ds.save_as(tmp_path / "long.dcm")
    h = read_header(tmp_path / "long.dcm")
    assert (h.rows, h.columns) == (128, 128)
    assert h.patient_name == str(ds.PatientName)


def test_character_sets_are_decoded(tmp_path):
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Müller^Jürgen"
    ds.StudyDescription = "胸部CT"
    ds.save_as(tmp_path / "utf8.dcm")
    h = read_header(tmp_path / "utf8.dcm")
    assert h.patient_name == "Müller^Jürgen"
    assert h.study_description == "胸部CT"


# -- parse_head: the header from the first bytes while the rest is in transit ----------------------
def _big_ct(tmp_path: Path, **changes) -> Path:
    """A CT over 64 KiB (the head holds the whole header, the pixel data go on beyond it)."""
    import numpy as np

    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.Rows, ds.Columns = 256, 256
    ds.PixelData = np.arange(256 * 256, dtype=np.int16).tobytes()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size > header.HEAD_BYTES
    return path


def test_parse_head_gives_what_read_header_gives_for_the_whole_file(tmp_path):
    path = _big_ct(tmp_path)
    early = header.parse_head(path.read_bytes()[: header.HEAD_BYTES])
    assert isinstance(early, header.EarlyHeader)
    assert early.outcome == read_header(path)
    assert read_header(path, early=early) == early.outcome
    assert 0 < early.checked_to < header.HEAD_BYTES  # the walk resumes at the pixel data


def test_parse_head_needs_the_whole_head():
    assert header.parse_head(b"\x00" * 128 + b"DICM") is None


def test_parse_head_finds_a_mismatch_that_read_header_raises_after_the_structure_check(tmp_path):
    path = _big_ct(tmp_path)
    head = path.read_bytes()[: header.HEAD_BYTES]
    early = header.parse_head(head, affected_sop_instance_uid="1.2.3.4")
    assert isinstance(early.outcome, header.SOPInstanceMismatchError)
    with pytest.raises(header.SOPInstanceMismatchError):
        read_header(path, early=early)
    # a file cut short is refused as malformed, whatever its head said
    truncated = tmp_path / "short.dcm"
    truncated.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(header.UnreadableObjectError):
        read_header(truncated, early=header.parse_head(head))


def test_parse_head_leaves_a_header_beyond_the_head_to_read_header(tmp_path):
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    ds.ImageComments = "x" * 70000  # (0020,4000) pushes Rows/Columns past the first 64 KiB
    ds.save_as(tmp_path / "long.dcm")
    assert header.parse_head((tmp_path / "long.dcm").read_bytes()[: header.HEAD_BYTES]) is None
