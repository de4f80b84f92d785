"""The header reader: the fast Little Endian scan must agree with pydicom's parser."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

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

    monkeypatch.setattr(header, "_fast_scan", refuse)
    # and every value decoded by pydicom, not by the direct decoding
    monkeypatch.setattr(header, "_raw_text", lambda ds, keyword, vrs: None)
    monkeypatch.setattr(header, "_decode_simple", lambda scanned, sop_class, sop_instance: None)


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


# -- the direct decoding of ASCII values must give what pydicom gives ---------------------------------
_DIRECT_KEYWORDS = (
    "PatientID", "PatientName", "AccessionNumber", "StudyDate", "StudyDescription", "Modality",
    "BodyPartExamined", "SeriesDescription", "SeriesNumber", "InstanceNumber", "NumberOfFrames",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "StudyInstanceUID",
    "SeriesInstanceUID",
)
# values are made of tokens, so that padding and delimiters meet often: spaces and NULs around
# backslashes, trailing '=' in person names, signs and exponents in numbers; and bytes outside
# ASCII or ESC, which leave the header to pydicom
_ASCII_TOKENS = [" ", "\x00", "\\", "=", "^", "\t", "\x01", "A", "b", "Zz", "0", "12", ".", "-", "+", "e", "3.5"]
_OTHER_TOKENS = _ASCII_TOKENS + ["\x1b$B", "é", "中"]
_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID")


@st.composite
def _raw_values(draw) -> dict[str, bytes]:
    """Raw values for some of the directly decoded attributes: mostly all ASCII (the direct
    path), sometimes with a byte that sends the header to pydicom; UIDs mostly valid."""
    tokens = draw(st.sampled_from([_ASCII_TOKENS] * 3 + [_OTHER_TOKENS]))
    keywords = draw(st.lists(st.sampled_from(_DIRECT_KEYWORDS), unique=True, max_size=6))
    values = {}
    for keyword in keywords:
        if keyword in _UID_KEYWORDS and draw(st.integers(0, 4)):
            text = "1.2." + ".".join(str(draw(st.integers(0, 99999))) for _ in range(draw(st.integers(1, 4))))
            text += draw(st.sampled_from(["", "\x00", " "]))
        else:
            text = "".join(draw(st.lists(st.sampled_from(tokens), max_size=10)))
        values[keyword] = text.encode("utf-8")
    return values


def _file_with_raw_values(path: Path, values: dict[str, bytes], implicit: bool, charset: str | None) -> None:
    """CT_small with the given elements' values written byte for byte (pydicom would convert
    them first): the other elements are encoded by pydicom one by one, these by hand
    (PS3.5 7.1.2/7.1.3; all have 2-byte lengths in explicit VR), in tag order."""
    import struct

    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_data_element, write_file_meta_info

    ds = pydicom.dcmread(sample("CT_small.dcm"))
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    encoded: dict[int, bytes] = {}
    for elem in ds:
        if elem.keyword in values:
            continue
        out = DicomBytesIO()
        out.is_little_endian, out.is_implicit_VR = True, implicit
        write_data_element(out, elem)
        encoded[int(elem.tag)] = out.getvalue()
    for keyword, raw in values.items():
        tag = tag_for_keyword(keyword)
        assert tag is not None, keyword
        vr = dictionary_VR(tag)
        if len(raw) % 2:
            raw += b"\x00" if vr == "UI" else b" "
        tag_bytes = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
        length = struct.pack("<I", len(raw)) if implicit else vr.encode() + struct.pack("<H", len(raw))
        encoded[tag] = tag_bytes + length + raw
    meta = DicomBytesIO()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    path.write_bytes(b"\x00" * 128 + b"DICM" + meta.getvalue() + b"".join(encoded[t] for t in sorted(encoded)))


def test_direct_decoding_is_used_for_an_ascii_header():
    scanned = header._fast_scan(sample("CT_small.dcm").read_bytes(), complete=True)
    direct = header._decode_simple(scanned, None, None)
    assert direct is not None
    assert direct == header._decode(scanned.dataset(), None, None)


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # invalid values on purpose
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          report_multiple_bugs=False)
@example(values={"PatientName": b"Doe^J==\\=A= \x00"}, implicit=False, charset=None)
@example(values={"StudyDescription": b" A \\B\x00\\ ", "PatientID": b"12 \\ "}, implicit=False, charset=None)
@example(values={"Modality": b" CT \\MR ", "StudyDate": b"20240101 \x00"}, implicit=True, charset="ISO_IR 100")
@example(values={"SeriesNumber": b" +12\\x", "PixelSpacing": b"0.5\\0.5 ", "NumberOfFrames": b"1e3"},
         implicit=False, charset=None)
@given(
    values=_raw_values(),
    implicit=st.booleans(),
    charset=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "GB18030", "ISO 2022 IR 87", "ISO_IR 13"]),
)
def test_direct_decoding_agrees_with_pydicom(values, implicit, charset, tmp_path):
    path = tmp_path / "raw.dcm"
    _file_with_raw_values(path, values, implicit, charset)
    direct = header._decode_simple(header._fast_scan(path.read_bytes(), complete=True), None, None)
    event("decoded directly" if direct is not None else "left to pydicom")
    fast = _outcome(path)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _slow(monkeypatch)
        assert fast == _outcome(path)


# every short combination of these tokens: padding, delimiters, empty values, overflow, text
_NUMBER_TOKENS = [b"1", b"1.5", b"1e400", b" ", b"\x00", b"\\", b"\t", b".", b"x", b"-"]


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")  # invalid values on purpose
@pytest.mark.parametrize("vr, keyword, count", [("IS", "SeriesNumber", None), ("DS", "PixelSpacing", 2)])
def test_is_and_ds_values_are_read_as_pydicom_reads_them(vr, keyword, count):
    """The direct IS/DS decoding of ``_int``/``_floats`` (used by both header paths) against
    pydicom's own conversion, over every combination of up to four tokens."""
    import itertools

    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    tag = tag_for_keyword(keyword)

    def read(value: bytes, direct: bool):
        ds = Dataset({tag: RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True)})
        ds.set_original_encoding(False, True, None)
        with pytest.MonkeyPatch.context() as monkeypatch:
            if not direct:
                monkeypatch.setattr(header, "_raw_text", lambda ds, keyword, vrs: None)
            return header._int(ds, keyword) if count is None else header._floats(ds, keyword, count)

    differ = []
    for size in range(1, 5):
        for tokens in itertools.product(_NUMBER_TOKENS, repeat=size):
            value = b"".join(tokens)
            if read(value, direct=True) != read(value, direct=False):
                differ.append(value)
    assert differ == []
