"""Test objects made from pydicom's bundled samples (no downloads): studies with fresh UIDs."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

__all__ = ["sample", "write_series", "write_study", "with_new_uids"]


def sample(name: str) -> Path:
    """Path of a bundled pydicom test file (fails loudly if it is not bundled)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not bundled")
    return Path(path)


def with_new_uids(ds: Dataset, *, study_uid: str, series_uid: str, number: int) -> Dataset:
    out = copy.deepcopy(ds)
    out.StudyInstanceUID = study_uid
    out.SeriesInstanceUID = series_uid
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.InstanceNumber = number
    if "ImagePositionPatient" in out:
        pos = [float(v) for v in out.ImagePositionPatient]
        out.ImagePositionPatient = [pos[0], pos[1], pos[2] + 2.5 * number]
    return out


def write_series(
    folder: Path,
    count: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    template: str = "CT_small.dcm",
    modality: str | None = None,
    series_description: str | None = None,
    body_part: str | None = None,
) -> list[Path]:
    """``count`` instances of one series (new UIDs) written to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    base = pydicom.dcmread(sample(template))
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    if modality:
        base.Modality = modality
    if series_description is not None:
        base.SeriesDescription = series_description
    if body_part is not None:
        base.BodyPartExamined = body_part
    paths = []
    for i in range(count):
        ds = with_new_uids(base, study_uid=study_uid, series_uid=series_uid, number=i + 1)
        path = folder / f"{series_uid}_{i + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study(folder: Path, series_counts: Sequence[int], study_uid: str | None = None) -> tuple[str, list[Path]]:
    study_uid = study_uid or generate_uid()
    paths: list[Path] = []
    for n, count in enumerate(series_counts):
        paths += write_series(folder / f"s{n}", count, study_uid=study_uid)
    return study_uid, paths
