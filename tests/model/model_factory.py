"""Synthetic DICOM objects for tests/model (pydicom only, written as PS3.10 files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from model.selection import SourceImage

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def grey_dataset(
    pixels: np.ndarray,
    *,
    modality: str = "CT",
    sop_class_uid: str = CT_IMAGE,
    series_uid: str | None = None,
    study_uid: str | None = None,
    instance_number: int = 1,
    position: list[float] | None = None,
    orientation: list[float] | None = None,
    body_part: str | None = None,
    rescale: tuple[float, float] | None = (1.0, -1024.0),
    window: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
) -> Dataset:
    """A single-frame grayscale image; pixels int16/uint16/uint8 (2D) or (frames, rows, cols)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.InstanceNumber = instance_number
    if body_part:
        ds.BodyPartExamined = body_part
    if position is not None:
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    if orientation is not None:
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{rescale[0]:g}", f"{rescale[1]:g}")
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{window[0]:g}", f"{window[1]:g}")
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write(ds: Dataset, folder: Path) -> Path:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def source_of(ds: Dataset, path: Path) -> SourceImage:
    """The SourceImage the worker would build from the database row."""

    def floats(name: str) -> list[float] | None:
        return [float(v) for v in ds[name].value] if name in ds else None

    return SourceImage(
        path=path,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        series_instance_uid=ds.SeriesInstanceUID,
        modality=ds.get("Modality"),
        body_part_examined=ds.get("BodyPartExamined"),
        rows=ds.get("Rows"),
        columns=ds.get("Columns"),
        number_of_frames=int(ds.NumberOfFrames) if "NumberOfFrames" in ds else None,
        instance_number=int(ds.InstanceNumber) if "InstanceNumber" in ds else None,
        image_position_patient=floats("ImagePositionPatient"),
        image_orientation_patient=floats("ImageOrientationPatient"),
    )


def ct_volume(folder: Path, n: int = 12, size: int = 64, *, reverse_numbers: bool = True, seed: int = 0) -> list[SourceImage]:
    """An axial CT series whose Instance Numbers run against the slice positions."""
    rng = np.random.default_rng(seed)
    series, study = generate_uid(), generate_uid()
    out = []
    for i in range(n):
        pixels = (rng.integers(0, 2000, size=(size, size)) + 24).astype(np.int16)
        ds = grey_dataset(
            pixels,
            series_uid=series,
            study_uid=study,
            instance_number=(n - i) if reverse_numbers else i + 1,
            position=[-100.0, -100.0, 10.0 * i],
            orientation=[1, 0, 0, 0, 1, 0],
            body_part="ABDOMEN",
        )
        out.append(source_of(ds, write(ds, folder)))
    return out
