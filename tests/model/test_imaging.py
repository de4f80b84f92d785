"""DICOM -> RGB: photometric interpretations, transfer syntaxes, LUTs, padding, frames."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from model.imaging import CT_PRESETS, ImagingError, ct_preset_for, prepare_image

from tests.dicom_node.corpus import sample
from tests.model.model_factory import grey_dataset, write

warnings.filterwarnings("ignore", module="pydicom")


def _grey(prepared) -> np.ndarray:
    arr = np.asarray(prepared.rgb)
    assert prepared.rgb.mode == "RGB"
    assert arr.shape == (prepared.rows, prepared.columns, 3)
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()
    return arr[..., 0].astype(int)


def _naive(ds, y_lo: float, y_hi: float) -> np.ndarray:
    """The straightforward float64 library pipeline, for comparison."""
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    return np.rint(np.clip((values - y_lo) / (y_hi - y_lo), 0, 1) * 255).astype(int)


def test_header_window_matches_the_library_pipeline() -> None:
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    prepared = prepare_image(ds)
    assert prepared.voi == "window (header)"
    expected = _naive(ds, -(2**15), 2**15 - 1)  # signed 16 bit, no rescale
    assert np.abs(_grey(prepared) - expected).max() <= 1


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_lossless_transfer_syntaxes_give_the_same_picture(name: str) -> None:
    reference = _grey(prepare_image(sample("MR_small.dcm")))
    assert (_grey(prepare_image(sample(name))) == reference).all()


def test_ct_without_window_uses_the_body_part_preset() -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"))
    assert "WindowCenter" not in ds
    prepared = prepare_image(ds)
    assert prepared.voi == "preset ct-soft-tissue"
    centre, width = CT_PRESETS["soft_tissue"]
    hu = apply_modality_lut(ds.pixel_array, ds)
    expected = np.clip(((hu - (centre - 0.5)) / (width - 1) + 0.5), 0, 1) * 255
    inside = ds.pixel_array != int(ds.PixelPaddingValue)
    assert np.abs(_grey(prepared)[inside] - expected[inside]).max() <= 1
    assert ct_preset_for("head") == "brain" and ct_preset_for("CHEST") == "lung" and ct_preset_for(None) == "soft_tissue"


def test_brain_preset_differs_from_soft_tissue(tmp_path: Path) -> None:
    hu = np.linspace(-100, 200, 64 * 64).reshape(64, 64).round().astype(np.int16) + 1024
    brain = prepare_image(grey_dataset(hu, body_part="HEAD"))
    soft = prepare_image(grey_dataset(hu, body_part="ABDOMEN"))
    assert brain.voi == "preset ct-brain" and soft.voi == "preset ct-soft-tissue"
    g = _grey(brain)
    assert g[hu - 1024 <= 0].max() == 0 and g[hu - 1024 >= 80].min() == 255


def test_monochrome1_is_inverted() -> None:
    ds = pydicom.dcmread(sample("MR_small.dcm"))
    normal = _grey(prepare_image(ds))
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert (_grey(prepare_image(ds)) == 255 - normal).all()


def test_padding_is_black_and_ignored_by_auto_window() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(100, 200, size=(32, 32)).astype(np.uint16)
    pixels[:4] = 0  # air outside the field of view, marked as padding
    plain = grey_dataset(pixels.copy(), modality="MR", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", rescale=None)
    plain_grey = _grey(prepare_image(plain))
    padded = grey_dataset(pixels.copy(), modality="MR", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", rescale=None)
    padded.PixelPaddingValue = 0
    prepared = prepare_image(padded)
    assert prepared.voi.startswith("auto")
    grey = _grey(prepared)
    assert (grey[:4] == 0).all()
    # with padding ignored the tissue spans the full range; without, the zeros compress it
    assert grey[4:].min() == 0 and grey[4:].max() == 255
    assert plain_grey[4:].min() > 0


def test_monochrome1_padding_stays_black() -> None:
    pixels = np.full((8, 8), 500, dtype=np.uint16)
    pixels[0] = 0
    pixels[1, :4] = 1000
    ds = grey_dataset(pixels, modality="CR", sop_class_uid="1.2.840.10008.5.1.4.1.1.1", rescale=None, photometric="MONOCHROME1")
    ds.PixelPaddingValue = 0
    grey = _grey(prepare_image(ds))
    assert (grey[0] == 0).all()
    assert grey[1, 0] < grey[2, 0]  # bright (dense) value dark in MONOCHROME1


def test_voi_lut_sequence() -> None:
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16)
    ds = grey_dataset(pixels, modality="CR", sop_class_uid="1.2.840.10008.5.1.4.1.1.1", rescale=None)
    item = pydicom.Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = [255 - v for v in range(256)]  # an inverting table
    ds.VOILUTSequence = [item]
    prepared = prepare_image(ds)
    assert prepared.voi == "VOI LUT sequence"
    assert (_grey(prepared) == 255 - pixels).all()


@pytest.mark.parametrize(("rgb", "ybr"), [("SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm"), ("SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm")])
def test_ybr_is_converted_to_rgb(rgb: str, ybr: str) -> None:
    a = np.asarray(prepare_image(sample(rgb)).rgb).astype(int)
    b = np.asarray(prepare_image(sample(ybr)).rgb).astype(int)
    assert np.abs(a - b).mean() < 3  # lossy JPEG and 4:2:2 chroma, same colours
    assert tuple(a[5, 5]) == (255, 0, 0)


@pytest.mark.parametrize("name", ["SC_rgb_gdcm_KY.dcm", "examples_jpeg2k.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_jls_lossy_line.dcm"])
def test_colour_transfer_syntaxes(name: str) -> None:
    prepared = prepare_image(sample(name))
    assert prepared.voi == "colour" and prepared.rgb.mode == "RGB"
    assert np.asarray(prepared.rgb).std() > 10


def test_palette_colour() -> None:
    ds = pydicom.dcmread(sample("examples_palette.dcm"))
    expected = apply_color_lut(ds.pixel_array, ds)
    expected = np.rint(expected.astype(np.float64) * 255 / (2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1))
    got = np.asarray(prepare_image(ds).rgb).astype(int)
    assert np.abs(got - expected).max() <= 1


def test_sixteen_bit_rgb_is_scaled_to_eight() -> None:
    got = np.asarray(prepare_image(sample("SC_rgb_rle_16bit.dcm")).rgb)
    assert tuple(got[5, 5]) == (255, 0, 0)


def test_multi_frame_colour_frames() -> None:
    path = sample("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(path)
    first = prepare_image(ds, 1)
    second = prepare_image(ds, 2)
    assert (first.frame_number, second.frame_number, first.number_of_frames) == (1, 2, 2)
    assert (np.asarray(first.rgb) == ds.pixel_array[0]).all()
    assert (np.asarray(second.rgb) == ds.pixel_array[1]).all()
    with pytest.raises(ImagingError):
        prepare_image(ds, 3)


def test_multi_frame_grey_with_per_frame_windows() -> None:
    frames = np.stack([np.full((8, 8), 1000 + 100 * i, dtype=np.uint16) for i in range(3)])
    ds = grey_dataset(frames, modality="CT", rescale=None)
    ds.NumberOfFrames = 3
    per_frame = []
    for i in range(3):
        group, voi = pydicom.Dataset(), pydicom.Dataset()
        voi.WindowCenter, voi.WindowWidth = 1000 + 100 * i, 50
        group.FrameVOILUTSequence = [voi]
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    for frame in (1, 2, 3):
        prepared = prepare_image(ds, frame)
        assert prepared.voi == "window (header)"
        assert 127 <= _grey(prepared).max() <= 131  # each frame at its own window centre (LINEAR, PS3.3 C.11.2.1.2.1)


def test_jpeg_extended_12_bit_and_j2k_ct() -> None:
    nm = prepare_image(sample("JPGExtended.dcm"), 1)
    assert (nm.rows, nm.columns) == (1024, 256)
    ct = prepare_image(sample("693_J2KI.dcm"))
    assert ct.voi == "window (header)" and _grey(ct).std() > 10


def test_saved_file_path_and_errors(tmp_path: Path) -> None:
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    path = write(grey_dataset(pixels, modality="OT", sop_class_uid="1.2.840.10008.5.1.4.1.1.7", rescale=None), tmp_path)
    prepared = prepare_image(path)
    assert (prepared.rows, prepared.columns, prepared.frame_number) == (8, 8, None)
    assert _grey(prepared).max() == 255
    no_pixels = pydicom.dcmread(path)
    del no_pixels.PixelData
    with pytest.raises(ImagingError, match="no pixel data"):
        prepare_image(no_pixels)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(ImagingError):
        prepare_image(tmp_path / "junk.dcm")
