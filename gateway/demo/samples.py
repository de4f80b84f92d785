"""Sample studies for the demo and the tests, built from pydicom's bundled files and generated images.

No download: pydicom ships ``CT_small.dcm`` and ``MR_small.dcm``; chest radiographs (CR) are
generated. The instances are re-identified into one study of one synthetic patient, with UIDs
derived from ``seed`` so a sample is the same every time it is built. The study has what image
selection must tell apart (model/selection.py):

* a chest CT of five axial slices (``CT_small`` repeated along the slice normal, 5 mm apart), a
  CT localizer series (one image, Image Type ``ORIGINAL\\PRIMARY\\LOCALIZER``, coronal) and a
  CT dose sheet (Secondary Capture with Burned In Annotation YES, as scanners send them);
* a brain MR of five axial slices (``MR_small`` repeated; its Image Type is set to ORIGINAL
  PRIMARY, as an acquisition's would be);
* a chest PA radiograph (``n_radiographs`` of them) and a lateral one (View Position LL).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from common.uids import derive_uid

__all__ = ["SampleStudy", "make_sample_study", "make_chest_radiograph", "CR_IMAGE_STORAGE", "SC_IMAGE_STORAGE",
           "VOLUME_SLICES"]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
#: Slices of the sample's CT and MR volumes.
VOLUME_SLICES = 5
_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                   "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                   "StudyDescription")


def _uid(seed: str, *parts: object) -> UID:
    """A UID derived from the seed, so the same sample has the same UIDs every time."""
    return UID(derive_uid("sample", seed, *map(str, parts)))


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


def _new_image(study: pydicom.Dataset, sop_class_uid: str, sop_instance_uid: str) -> pydicom.Dataset:
    """A new image of ``study``: file meta, SOP identity, the study's patient and study attributes."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = UID(sop_instance_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for keyword in _STUDY_KEYWORDS:
        setattr(ds, keyword, getattr(study, keyword))
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def _cr_dataset(study: pydicom.Dataset, seed: str, number: int, lateral: bool = False) -> pydicom.Dataset:
    pixels = make_chest_radiograph(seed=number)
    ds = _new_image(study, CR_IMAGE_STORAGE, _uid(seed, "cr-lateral" if lateral else "cr", number))
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ViewPosition = "LL" if lateral else "PA"
    ds.SeriesInstanceUID = _uid(seed, "cr-lateral-series" if lateral else "cr-series")
    ds.SeriesNumber = 6 if lateral else 3
    ds.SeriesDescription = "Chest lateral" if lateral else "Chest PA"
    ds.InstanceNumber = number
    ds.Manufacturer = "medrega-gateway sample generator"
    # PS3.3 C.7.6.1.1.1: rows run to the patient's right on a PA film (viewed as facing the
    # patient), anterior on a left lateral; columns run to the feet.
    ds.PatientOrientation = ["A", "F"] if lateral else ["R", "F"]
    ds.ContentDate, ds.ContentTime = study.StudyDate, study.StudyTime
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.PixelData = pixels.tobytes()
    return ds


def _from_testdata(study: pydicom.Dataset, name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom's test file {name} is not installed")
    ds = pydicom.dcmread(path)
    for keyword in _STUDY_KEYWORDS:
        setattr(ds, keyword, getattr(study, keyword))
    for keyword in ("OtherPatientIDs", "PatientAge", "InstitutionName", "RequestingPhysician"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def _volume_slice(study: pydicom.Dataset, seed: str, name: str, series_number: int, body_part: str,
                  k: int) -> pydicom.Dataset:
    """Slice ``k`` of a volume: the test file moved ``k`` slice thicknesses along its normal."""
    ds = _from_testdata(study, name)
    ds.SeriesInstanceUID = _uid(seed, name, "series")
    ds.SOPInstanceUID = _uid(seed, name, "instance", k)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesNumber = series_number
    ds.InstanceNumber = k + 1
    ds.BodyPartExamined = body_part
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    step = float(ds.get("SliceThickness") or 5.0)
    iop = [float(v) for v in ds.ImageOrientationPatient]
    normal = np.cross(iop[:3], iop[3:])
    ds.ImagePositionPatient = [f"{float(v) + k * step * n:.4f}" for v, n in zip(ds.ImagePositionPatient, normal)]
    if "SliceLocation" in ds:
        ds.SliceLocation = f"{float(ds.SliceLocation) + k * step:.4f}"
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = _uid(seed, name, "for")
    return ds


def _localizer(study: pydicom.Dataset, seed: str) -> pydicom.Dataset:
    """A CT scout: one coronal image whose Image Type says LOCALIZER (PS3.3 C.8.2.1.1.1)."""
    ds = _from_testdata(study, "CT_small.dcm")
    ds.SeriesInstanceUID = _uid(seed, "ct-localizer-series")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, "ct-localizer")
    ds.SeriesNumber, ds.InstanceNumber = 4, 1
    ds.SeriesDescription = "Topogram"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = _uid(seed, "CT_small.dcm", "for")
    return ds


def _dose_sheet(study: pydicom.Dataset, seed: str) -> pydicom.Dataset:
    """A CT dose sheet as scanners send it: a Secondary Capture image of a table, text burned in."""
    pixels = np.full((256, 320), 30, dtype=np.uint8)
    pixels[40:44, 20:300] = 220
    pixels[80:84, 20:300] = 220
    ds = _new_image(study, SC_IMAGE_STORAGE, _uid(seed, "ct-dose-sheet"))
    ds.Modality = "CT"
    ds.ConversionType = "WSD"
    ds.SeriesInstanceUID = _uid(seed, "ct-dose-series")
    ds.SeriesNumber, ds.InstanceNumber = 5, 1
    ds.SeriesDescription = "Dose Report"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.BurnedInAnnotation = "YES"
    ds.PatientOrientation = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def make_sample_study(folder: Path, seed: str = "medrega-demo", n_radiographs: int = 1,
                      lateral: bool = True) -> SampleStudy:
    """Write the sample study (see the module docstring) into ``folder``; returns its files."""
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
    for series_number, name, body_part in ((1, "CT_small.dcm", "CHEST"), (2, "MR_small.dcm", "BRAIN")):
        for k in range(VOLUME_SLICES):
            ds = _volume_slice(study, seed, name, series_number, body_part, k)
            path = folder / f"{ds.Modality.lower()}_{series_number}_{k + 1}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    localizer = _localizer(study, seed)
    files.append(folder / "ct_4_localizer.dcm")
    localizer.save_as(files[-1], enforce_file_format=True)
    files.append(folder / "ct_5_dose_sheet.dcm")
    _dose_sheet(study, seed).save_as(files[-1], enforce_file_format=True)
    for number in range(1, n_radiographs + 1):
        path = folder / f"cr_{number}.dcm"
        _cr_dataset(study, seed, number).save_as(path, enforce_file_format=True)
        files.append(path)
    if lateral:
        files.append(folder / "cr_lateral.dcm")
        _cr_dataset(study, seed, 1, lateral=True).save_as(files[-1], enforce_file_format=True)
    return SampleStudy(study_instance_uid=study.StudyInstanceUID, patient_id=study.PatientID, files=files)
