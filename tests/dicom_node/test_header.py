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
