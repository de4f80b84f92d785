"""Sample studies for the demo and the tests, built from pydicom's bundled files and generated images.

No download: pydicom ships ``CT_small.dcm`` and ``MR_small.dcm``; a chest radiograph (CR) is
generated. The instances are re-identified into one study of one synthetic patient, with UIDs
derived from ``seed`` so a sample is the same every time it is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from common.uids import derive_uid

__all__ = ["SampleStudy", "make_sample_study", "make_chest_radiograph", "CR_IMAGE_STORAGE"]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def _uid(seed: str, *parts: object) -> str:
    """A UID derived from the seed, so the same sample has the same UIDs every time."""
    return derive_uid("sample", seed, *map(str, parts))


@dataclass(frozen=True)
class SampleStudy:
    study_instance_uid: str
    patient_id: str
    files: list[Path]


def make_chest_radiograph(rows: int = 512, columns: int = 440, seed: int = 0) -> np.ndarray:
    """A synthetic 12-bit chest-radiograph-like picture: two dark lung fields, a mediastinum."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    img = np.full((rows, columns), 2600.0, dtype=np.float32)
    for cx in (0.30 * columns, 0.70 * columns):
        lung = ((x - cx) / (0.17 * columns)) ** 2 + ((y - 0.50 * rows) / (0.36 * rows)) ** 2 < 1
        img[lung] = 900.0
    heart = ((x - 0.56 * columns) / (0.14 * columns)) ** 2 + ((y - 0.64 * rows) / (0.15 * rows)) ** 2 < 1
    img[heart] = 2200.0
    img += rng.normal(0, 40, size=img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def _cr_dataset(study: pydicom.Dataset, seed: str, number: int) -> pydicom.Dataset:
    pixels = make_chest_radiograph(seed=number)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = _uid(seed, "cr", number)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                    "StudyDescription"):
        setattr(ds, keyword, getattr(study, keyword))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SeriesInstanceUID = _uid(seed, "cr-series")
    ds.SeriesNumber = 3
    ds.SeriesDescription = "Chest PA"
    ds.InstanceNumber = number
    ds.Manufacturer = "medrega-gateway sample generator"
    ds.PatientOrientation = ["R", "F"]
    ds.ContentDate, ds.ContentTime = study.StudyDate, study.StudyTime
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.PixelData = pixels.tobytes()
    return ds


def make_sample_study(folder: Path, seed: str = "medrega-demo", n_radiographs: int = 1) -> SampleStudy:
    """Write a study of three series (CT, MR, CR) into ``folder``; returns its files."""
    folder.mkdir(parents=True, exist_ok=True)
    study = pydicom.Dataset()
    study.PatientName = "Demo^Patient"
    study.PatientID = "DEMO-0001"
    study.PatientBirthDate = "19700101"
    study.PatientSex = "O"
    study.StudyInstanceUID = _uid(seed, "study")
    study.StudyDate, study.StudyTime = "20261127", "101500"
    study.StudyID = "1"
    study.AccessionNumber = "ACC0001"
    study.ReferringPhysicianName = ""
    study.StudyDescription = "Sample study (pydicom test files + generated CR)"

    files: list[Path] = []
    for series_number, name in ((1, "CT_small.dcm"), (2, "MR_small.dcm")):
        ds = pydicom.dcmread(get_testdata_file(name))
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                        "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                        "StudyDescription"):
            setattr(ds, keyword, getattr(study, keyword))
        for keyword in ("OtherPatientIDs", "PatientAge", "InstitutionName", "RequestingPhysician"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.SeriesInstanceUID = _uid(seed, name, "series")
        ds.SOPInstanceUID = _uid(seed, name, "instance")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesNumber = series_number
        if "FrameOfReferenceUID" in ds:
            ds.FrameOfReferenceUID = _uid(seed, name, "for")
        path = folder / f"{ds.Modality.lower()}_{series_number}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    for number in range(1, n_radiographs + 1):
        path = folder / f"cr_{number}.dcm"
        _cr_dataset(study, seed, number).save_as(path, enforce_file_format=True)
        files.append(path)
    return SampleStudy(study_instance_uid=study.StudyInstanceUID, patient_id=study.PatientID, files=files)
