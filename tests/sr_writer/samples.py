"""Sample studies (CT, MR, CR, DX, US, SC) and report contents for the sr_writer tests.

CT, MR, US and SC images are pydicom's bundled test files (read from the installed package,
never downloaded); CR and DX are generated here with numpy. Each sample is copied into a
test folder so that tests can change it without touching the bundled files.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from common.uids import derive_uid
from sr_writer.content import (
    AlgorithmInfo,
    ImageFinding,
    Note,
    RegionFinding,
    ReportContent,
    frame_count,
    is_multiframe,
)

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"

MEDREGA = AlgorithmInfo(
    backend="medrega",
    name="MedRegA",
    version="1.0",
    weights_id="sha256:" + "ab" * 28,
    manufacturer="medrega-gateway",
    is_test_model=False,
)
TINY = AlgorithmInfo(
    backend="tiny",
    name="tiny-random-internvl (test model, not MedRegA)",
    version="0.1",
    weights_id="sha256:" + "cd" * 28,
    manufacturer="medrega-gateway",
    is_test_model=True,
)
WHEN = datetime.datetime(2025, 3, 4, 10, 20, 30, 123000)

#: Bundled files per modality ("CR" and "DX" are generated).
BUNDLED = {
    "CT": ["CT_small.dcm"],
    "MR": ["MR_small.dcm"],
    "US": ["examples_ybr_color.dcm", "examples_rgb_color.dcm"],
    "SC": ["SC_rgb_rle.dcm"],
}
MODALITIES = ("CT", "MR", "CR", "DX", "US", "SC")


def _generated(modality: str, study_uid: str) -> Dataset:
    """A small synthetic chest radiograph (CR or DX) with a gradient and two 'lungs'."""
    rows, columns = 240, 200
    yy, xx = np.mgrid[0:rows, 0:columns]
    pixels = (1000 + 2 * yy + xx).astype(np.uint16)
    for cx in (55, 145):
        pixels[((xx - cx) / 40.0) ** 2 + ((yy - 110) / 80.0) ** 2 < 1] = 300
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ComputedRadiographyImageStorage if modality == "CR" else DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = derive_uid("sample", modality, "instance")
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = derive_uid("sample", modality, "series")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "张^三" if modality == "CR" else "Doe^Jane"
    ds.PatientID = f"P-{modality}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate = "20250301"
    ds.StudyTime = "101010"
    ds.AccessionNumber = f"ACC{modality}"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Manufacturer = "Sample X-ray Co"
    ds.BodyPartExamined = "CHEST"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 1300, 1400
    if modality == "CR":
        ds.PixelSpacing = [0.5, 0.4]  # unequal spacing: catches a swapped row/column
        ds.ProcedureCodeSequence = [_code("24627-2", "LN", "Chest X-ray")]
    else:
        ds.ImagerPixelSpacing = [0.3, 0.3]  # detector plane only: no measurements in mm
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelData = pixels.tobytes()
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


@dataclass
class Sample:
    """A study on disk: its image files and their datasets."""

    modality: str
    paths: list[Path]
    datasets: list[Dataset]

    @property
    def headers(self) -> list[Dataset]:
        return [pydicom.dcmread(p, stop_before_pixels=True) for p in self.paths]

    @property
    def by_sop_uid(self) -> dict[str, Dataset]:
        return {str(ds.SOPInstanceUID): ds for ds in self.datasets}


def make_sample(modality: str, folder: Path) -> Sample:
    """Copy (or generate) the images of ``modality`` into ``folder`` as one study."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = derive_uid("sample-study", modality)
    datasets: list[Dataset] = []
    if modality in ("CR", "DX"):
        datasets.append(_generated(modality, study_uid))
    else:
        for name in BUNDLED[modality]:
            ds = pydicom.dcmread(TEST_FILES / name)
            ds.StudyInstanceUID = study_uid  # the bundled US files come from two studies
            if modality == "CT":
                ds.PatientName = "Müller^Jürgen"  # Latin-1 source: must arrive as UTF-8
                ds.SpecificCharacterSet = "ISO_IR 100"
            datasets.append(ds)
    paths = []
    for index, dataset in enumerate(datasets):
        path = folder / f"{modality}_{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    # Read back, so that names carry their source encoding as they would from PACS.
    return Sample(modality, paths, [pydicom.dcmread(p) for p in paths])


def _box(ds: Dataset, fx1: float, fy1: float, fx2: float, fy2: float) -> tuple[float, float, float, float]:
    columns, rows = int(ds.Columns), int(ds.Rows)
    return (round(fx1 * columns, 1), round(fy1 * rows, 1), round(fx2 * columns, 1), round(fy2 * rows, 1))


#: (label en, label zh, description en, description zh, box as fractions of the image)
REGION_SPECS: tuple[tuple[str, str, str | None, str | None, tuple[float, float, float, float]], ...] = (
    ("right lung", "右肺", "Clear right lung.", "右肺清晰。", (0.10, 0.15, 0.45, 0.80)),
    ("left lung", "左肺", None, None, (0.55, 0.15, 0.90, 0.80)),
    ("pleural effusion", "胸腔积液", "Small effusion at the base.", "底部少量积液。", (0.12, 0.70, 0.30, 0.85)),
    ("pleural effusion", "胸腔积液", "Second pocket.", "第二处积液。", (0.60, 0.70, 0.85, 0.88)),
    ("pancreatic carcinoma", "胰腺癌", "Hypodense mass.", "低密度肿块。", (0.40, 0.40, 0.60, 0.55)),
    ("odd shadow", "奇怪阴影", "Not in the table.", "不在映射表中。", (0.30, 0.05, 0.50, 0.12)),
)

REPORT_TEXTS = {
    "en": ["Findings: small bilateral pleural effusions.", "Impression: no acute abnormality otherwise."],
    "zh": ["所见：双侧少量胸腔积液。", "印象：其余未见急性异常。"],
}


def regions_for(sample: Sample, language: str, specs: Sequence = REGION_SPECS) -> list[RegionFinding]:
    """Regions over every image of ``sample`` (frames 1 and last of multi-frame images)."""
    regions = []
    for image_index, ds in enumerate(sample.datasets):
        frames = sorted({1, frame_count(ds)}) if is_multiframe(ds) else [None]
        spacing = ds.get("PixelSpacing")
        for frame in frames:
            for spec_index, (label_en, label_zh, desc_en, desc_zh, box) in enumerate(specs):
                key = f"{sample.modality}-{image_index}-{frame}-{spec_index}"
                regions.append(
                    RegionFinding(
                        tracking_uid=derive_uid("tracking", key),
                        tracking_identifier=f"{label_en} #{spec_index + 1}"
                        + (f" frame {frame}" if frame else ""),
                        label=label_en if language == "en" else label_zh,
                        description=desc_en if language == "en" else desc_zh,
                        code=None,
                        referenced_sop_class_uid=str(ds.SOPClassUID),
                        referenced_sop_instance_uid=str(ds.SOPInstanceUID),
                        frame_number=frame,
                        pixels=_box(ds, *box),
                        pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
                    )
                )
    return regions


def content_for(
    sample: Sample,
    language: str,
    *,
    regions: Sequence[RegionFinding] | None = None,
    texts: Sequence[str] | None = None,
    algorithm: AlgorithmInfo = MEDREGA,
    version: int = 1,
    predecessor: Sequence[tuple[str, str, str, str]] = (),
) -> ReportContent:
    return ReportContent(
        language=language,
        evidence=sample.headers,
        report_texts=REPORT_TEXTS[language] if texts is None else texts,
        regions=regions_for(sample, language) if regions is None else regions,
        algorithm=algorithm,
        study_version=version,
        content_datetime=WHEN,
        predecessor=predecessor,
        institution_name="Test Hospital 测试医院",
    )


def one_language_content(sample: Sample, language: str) -> ReportContent:
    """Findings of tasks trained in one language only, as the worker hands them to both SRs:
    an English report and a Chinese one (each marked when not the SR's language), English region
    descriptions, a coded classification finding about the first image, and two notes."""
    first = sample.headers[0]
    source = (str(first.SOPClassUID), str(first.SOPInstanceUID), 1 if is_multiframe(first) else None)
    regions = [
        RegionFinding(**{**r.__dict__, "description_language": "en" if language != "en" else None})
        for r in regions_for(sample, "en")
    ]
    return ReportContent(
        language=language,
        evidence=sample.headers,
        report_texts=[REPORT_TEXTS["en"][0], REPORT_TEXTS["zh"][0]],
        report_sources=[source, source],
        report_languages=[None if language == "en" else "en", None if language == "zh" else "zh"],
        image_findings=[ImageFinding(("287272002", "SCT", "Cardiomegaly" if language == "en" else "心脏增大"), source)],
        notes=[Note("truncated", "classification (vindrcxr_train_cls)"),
               Note("prior_study", "report (mimiccxr_train_rg)", "Compared to prior, unchanged.", "en")],
        complete=False,
        regions=regions,
        algorithm=MEDREGA,
        study_version=1,
        content_datetime=WHEN,
        institution_name="Test Hospital 测试医院",
    )


#: Issue 12: boxes of one chest CT slice found on two CT windows, in pixels (x1, y1, x2, y2) of
#: :func:`windowed_chest_ct`: a lung-window box where the HU are lung-like (about -750 to -280)
#: and a mediastinal-window box where they are soft tissue (about -110 to 190).
WINDOW_BOXES: dict[str, tuple[float, float, float, float]] = {
    "lung": (60.0, 150.0, 160.0, 350.0),
    "mediastinum": (200.0, 160.0, 260.0, 340.0),
}
WINDOWED_CT_SIZE = 512


def windowed_chest_ct(study_uid: str, series_uid: str, sop_uid: str) -> Dataset:
    """A 512 x 512 chest CT slice whose lung, mediastinal and header windows all look different.

    HU rise from -1024 on the left to about +1380 on the right (plus a small ripple down the
    rows, so no box is one flat grey); the header window is soft tissue (40/400), so a picture
    drawn on the header window differs from both presets inside both boxes.
    """
    size = WINDOWED_CT_SIZE
    yy, xx = np.mgrid[0:size, 0:size]
    stored = (np.rint(xx * 4.7) + (yy % 16)).astype(np.int16)  # HU = stored - 1024
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Doe^Jane", "P-CTW", "19700101", "F"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20250301", "101010", "ACCCTW", "1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Manufacturer = "Sample CT Co"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.FrameOfReferenceUID = derive_uid("sample", "ct-windows", "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = [-250.0, -250.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceThickness = 1.0
    ds.PixelSpacing = [0.7, 0.7]
    ds.KVP = 120
    ds.AcquisitionNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = stored.tobytes()
    return ds


def windowed_regions(ds: Dataset, language: str) -> list[RegionFinding]:
    """One region per :data:`WINDOW_BOXES` window on ``ds``, as the worker hands them to the SR."""
    names = {"lung": ("right lung", "右肺"), "mediastinum": ("heart", "心脏")}
    return [
        RegionFinding(
            tracking_uid=derive_uid("tracking", "ct-windows", window),
            tracking_identifier=f"{names[window][0]} ({window} window)",
            label=names[window][0] if language == "en" else names[window][1],
            description=None,
            code=None,
            referenced_sop_class_uid=str(ds.SOPClassUID),
            referenced_sop_instance_uid=str(ds.SOPInstanceUID),
            frame_number=None,
            pixels=box,
            pixel_spacing=(0.7, 0.7),
            window=window,
        )
        for window, box in WINDOW_BOXES.items()
    ]


def inside(box: tuple[float, float, float, float], margin: int = 8) -> tuple[slice, slice]:
    """(rows, columns) slices of a box's inside, ``margin`` pixels clear of its outline."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return slice(y1 + margin, y2 - margin), slice(x1 + margin, x2 - margin)
