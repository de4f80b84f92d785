"""write_dataset: Part 10, Explicit VR Little Endian, atomic."""

from __future__ import annotations

import os

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from sr_writer.errors import WriteError
from sr_writer.io import write_dataset
from sr_writer.report import build_sr
from tests.sr_writer.samples import content_for


@pytest.fixture(scope="module")
def sr(built):
    return build_sr(content_for(built["MR"].sample, "zh"))


def test_writes_part10_explicit_little_endian(sr, tmp_path) -> None:
    path = write_dataset(sr, tmp_path / "out.dcm")
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPInstanceUID == sr.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == sr.SOPClassUID
    assert not ds.original_encoding[0] and ds.original_encoding[1]  # explicit VR, little endian
    assert os.listdir(tmp_path) == ["out.dcm"]


def test_replaces_an_existing_file_whole(sr, tmp_path) -> None:
    target = tmp_path / "out.dcm"
    target.write_bytes(b"old and shorter" * 1000)
    write_dataset(sr, target)
    assert pydicom.dcmread(target).SOPInstanceUID == sr.SOPInstanceUID
    assert os.listdir(tmp_path) == ["out.dcm"]


def test_failure_leaves_no_file_and_no_temporary(sr, tmp_path, monkeypatch) -> None:
    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(WriteError, match="disk full"):
        write_dataset(sr, tmp_path / "out.dcm")
    assert os.listdir(tmp_path) == []


def test_missing_folder_is_a_write_error(sr, tmp_path) -> None:
    with pytest.raises(WriteError):
        write_dataset(sr, tmp_path / "missing" / "out.dcm")


def test_dataset_without_uids_is_refused(tmp_path) -> None:
    with pytest.raises(WriteError, match="SOPClassUID"):
        write_dataset(pydicom.Dataset(), tmp_path / "x.dcm")
