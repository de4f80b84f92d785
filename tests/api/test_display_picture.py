"""One DICOM-frame-to-display function: the model, ``render`` and the web page show the same pixels.

Issue 12: the picture an auditor sees must be the picture the model saw. The model renders with
:func:`model.imaging.prepare_image`; ``medrega-gateway render`` (sr_writer.render) and the study
page's annotated PNG (gateway.api.render) must give the same 8-bit RGB pixels for every kind of
image: a CT (rescale + CT window), an MR (header window), a MONOCHROME1 CR (inverted) and an RGB
ultrasound, and a frame of a multi-frame YBR ultrasound.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

from gateway.api.render import ImageNotAvailableError, display_picture, render_annotated_png
from model.imaging import CT_PRESETS, ct_preset_for, prepare_image
from sr_writer.errors import RenderError
from sr_writer.render import source_picture
from tests.dicom_node.corpus import sample

warnings.filterwarnings("ignore", module="pydicom")

CR_IMAGE = ComputedRadiographyImageStorage  # PS3.4 B.5


def _cr_monochrome1(folder: Path) -> Path:
    """A 12-bit MONOCHROME1 CR with a header window (as CR plates are sent)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CR_IMAGE
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CR"
    y, x = np.mgrid[0:96, 0:80]
    pixels = ((x * 37 + y * 11) % 4096).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "2000", "3000"
    ds.PixelData = pixels.tobytes()
    path = folder / "cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


SAMPLES = {
    "CT": ("CT_small.dcm", None),
    "MR": ("MR_small.dcm", None),
    "US RGB": ("examples_rgb_color.dcm", None),
    "US YBR frame 2": ("examples_ybr_color.dcm", 2),
}


@pytest.mark.parametrize("kind", [*SAMPLES, "CR MONOCHROME1"])
def test_model_render_and_page_show_the_same_pixels(kind: str, tmp_path: Path) -> None:
    if kind == "CR MONOCHROME1":
        path, frame = _cr_monochrome1(tmp_path), None
    else:
        name, frame = SAMPLES[kind]
        path = sample(name)
    model = prepare_image(path, frame)
    seen = np.asarray(model.rgb)
    assert seen.dtype == np.uint8 and seen.shape == (model.rows, model.columns, 3)
    assert seen.std() > 0, "the sample renders as one flat colour: the comparison would prove nothing"

    sr_render = source_picture(pydicom.dcmread(path), frame)
    page = np.asarray(display_picture(pydicom.dcmread(path), frame))
    assert np.array_equal(sr_render, seen)
    assert np.array_equal(page, seen)

    # The PNG the page serves is that picture, enlarged for reading (no regions drawn here).
    served = Image.open(io.BytesIO(render_annotated_png(path, [], frame_number=frame)))
    expected = model.rgb.resize(served.size, Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(expected))


def test_the_renderings_apply_the_window_and_polarity(tmp_path: Path) -> None:
    """The shared picture is windowed (not stretched to the frame's min and max, as the page and
    ``render`` did before) and MONOCHROME1 is dark where the stored value is high."""
    ct = pydicom.dcmread(sample("CT_small.dcm"))
    picture = np.asarray(display_picture(ct, None))[..., 0].astype(int)
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert "WindowCenter" not in ct  # so the CT preset of its body part applies
    centre, width = CT_PRESETS[ct_preset_for(ct.get("BodyPartExamined"))]
    assert (picture[hu <= centre - width / 2] == 0).all()
    assert (picture[hu >= centre + width / 2] == 255).all()

    cr = pydicom.dcmread(_cr_monochrome1(tmp_path))
    grey = np.asarray(source_picture(cr, None))[..., 0]
    stored = cr.pixel_array
    assert grey[stored >= 3500].max() == 0 and grey[stored <= 500].min() == 255


def test_a_missing_frame_is_an_error_of_each_surface() -> None:
    ds = pydicom.dcmread(sample("examples_ybr_color.dcm"))
    with pytest.raises(ImageNotAvailableError, match="frame 31 does not exist"):
        display_picture(ds, 31)
    with pytest.raises(RenderError, match="frame 31 does not exist"):
        source_picture(ds, 31)
