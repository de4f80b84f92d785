"""DICOM pixels -> the RGB picture MedRegA sees, plus the geometry back to the source pixels.

The rendering pipeline of PS3.4 N.2 (grayscale) and PS3.3 C.7.6.3 (colour), with pydicom's
pixel handling (``pydicom.pixels``):

* decode once, only the wanted frame of a multi-frame object (``pixel_array(ds, index=...)``),
  any transfer syntax pydicom's plugins read (JPEG, JPEG-LS, JPEG 2000, RLE, deflate, ...);
* grayscale (MONOCHROME1/2), 8 to 16 bits stored: Modality LUT (PS3.3 C.11.1: rescale slope and
  intercept or Modality LUT Sequence), VOI LUT (PS3.3 C.11.2: the header's window, its VOI LUT
  Sequence, per-frame values of enhanced objects (C.7.6.16.2.9/10), otherwise a CT preset chosen
  from Body Part Examined (brain, soft tissue, lung, bone), otherwise the 0.1-99.9 percentile
  range of the frame), MONOCHROME1 inverted (C.7.6.3.1.2), pixel padding (C.7.5.1.1.2) excluded
  from the statistics and shown black. The chain runs on the (at most 65,536) possible stored
  values with pydicom's ``apply_modality_lut``/``apply_voi_lut``, giving an 8-bit lookup table
  that is applied to the frame in one pass: no float64 image is ever made;
* colour: RGB and YBR (pydicom's decoding converts YBR to RGB with ``convert_color_space``),
  PALETTE COLOR through ``apply_color_lut``; more than 8 bits are scaled to 8.

The picture keeps the source size (Columns x Rows): MedRegA's boxes are relative to the whole
image, so a box maps back to source pixels with Rows and Columns alone (:mod:`model.geometry`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

__all__ = ["ImagingError", "PreparedImage", "CT_PRESETS", "ct_preset_for", "prepare_image", "read_dataset"]


class ImagingError(ValueError):
    """The object has no pixels we can render (no Pixel Data, unsupported layout, bad frame)."""


#: CT windows (centre, width) in Hounsfield units.
CT_PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "soft_tissue": (40.0, 400.0),
    "mediastinum": (40.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
}
_CT_PRESET_BY_BODY_PART = {
    "HEAD": "brain",
    "BRAIN": "brain",
    "SKULL": "brain",
    "CHEST": "lung",
    "THORAX": "lung",
    "LUNG": "lung",
    "SPINE": "bone",
    "CSPINE": "bone",
    "TSPINE": "bone",
    "LSPINE": "bone",
    "EXTREMITY": "bone",
}
AUTO_PERCENTILES = (0.1, 99.9)


def ct_preset_for(body_part_examined: str | None) -> str:
    """The CT preset used when a CT header has no window: by Body Part Examined (0018,0015)."""
    return _CT_PRESET_BY_BODY_PART.get((body_part_examined or "").strip().upper(), "soft_tissue")


@dataclass(frozen=True)
class PreparedImage:
    """One frame rendered for the model."""

    rgb: Image.Image  # mode RGB, size (columns, rows)
    rows: int
    columns: int
    #: 1-based frame number (Referenced Frame Number) for multi-frame objects, else None.
    frame_number: int | None
    number_of_frames: int
    photometric_interpretation: str
    #: How grey values were mapped: "window (header)", "VOI LUT sequence", "preset ct-lung",
    #: "auto 0.1-99.9 %", or "colour".
    voi: str


def read_dataset(path: str | Path) -> Dataset:
    """Read a DICOM file (PS3.10) with its pixel data."""
    try:
        return pydicom.dcmread(str(path))
    except (pydicom.errors.InvalidDicomError, OSError) as exc:
        raise ImagingError(f"{path}: not a readable DICOM file ({exc})") from None


def _frame_groups(ds: Dataset, index: int) -> list[Dataset]:
    """Functional group items that apply to frame ``index`` (per-frame first, then shared)."""
    groups: list[Dataset] = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        groups.append(per_frame[index])
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    return groups


_PIXEL_MODULE_TAGS = tuple(
    Tag(keyword)
    for keyword in (
        "PhotometricInterpretation",
        "BitsStored",
        "BitsAllocated",
        "PixelRepresentation",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "ModalityLUTSequence",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "VOILUTSequence",
    )
)


def _pixel_module(ds: Dataset, index: int) -> Dataset:
    """A flat dataset holding what the Modality and VOI LUT stages read for this frame.

    Enhanced objects keep rescale and window in functional groups (PS3.3 C.7.6.16.2.9 Pixel Value
    Transformation, C.7.6.16.2.10 Frame VOI LUT); classic objects at the top level.
    """
    # The same data elements (cheaper than setting attributes one by one); stages that add
    # elements (a CT preset window) add them to this dataset only.
    present = ds.keys()
    px = Dataset({tag: ds[tag] for tag in _PIXEL_MODULE_TAGS if tag in present})
    for group in _frame_groups(ds, index):
        for seq_name, keywords in (
            ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
            ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
        ):
            seq = group.get(seq_name)
            if seq:
                for keyword in keywords:
                    if keyword in seq[0] and keyword not in px:
                        setattr(px, keyword, seq[0][keyword].value)
    return px


def _output_range(px: Dataset) -> tuple[float, float]:
    """Range of the VOI LUT stage's output, as pydicom's windowing defines it (PS3.3 C.11.2.1.2)."""
    if px.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(px.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(px.PixelRepresentation) == 0:
        lo, hi = 0.0, float(2 ** int(px.BitsStored) - 1)
    else:
        lo, hi = float(-(2 ** (int(px.BitsStored) - 1))), float(2 ** (int(px.BitsStored) - 1) - 1)
    if "RescaleSlope" in px and "RescaleIntercept" in px:
        slope, intercept = float(px.RescaleSlope), float(px.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    return lo, hi


def _padding_mask(ds: Dataset, domain: np.ndarray) -> np.ndarray | None:
    """Which stored values are pixel padding (PS3.3 C.7.5.1.1.2), over the value domain."""
    if "PixelPaddingValue" not in ds:
        return None
    a = int(ds.PixelPaddingValue)
    b = int(ds.get("PixelPaddingRangeLimit", a))
    lo, hi = min(a, b), max(a, b)
    return (domain >= lo) & (domain <= hi)


def _grey_lut(ds: Dataset, px: Dataset, frame: np.ndarray, photometric: str,
              window: str | None = None) -> tuple[np.ndarray, str]:
    """An 8-bit output for every stored value the frame holds, indexed by the value's bits.

    The returned table has 2**bits entries (indexed by the unsigned view of the stored value);
    only the values between the frame's minimum and maximum are computed.
    """
    bits = frame.dtype.itemsize * 8
    unsigned = np.dtype(f"uint{bits}")
    lo_value, hi_value = int(frame.min()), int(frame.max())
    domain = np.arange(lo_value, hi_value + 1, dtype=np.int64).astype(frame.dtype)  # stored values present
    padding = _padding_mask(ds, domain)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd but usable LUT descriptors
        modality = apply_modality_lut(domain, px).astype(np.float64, copy=False)
        has_voi = "WindowCenter" in px or bool(px.get("VOILUTSequence"))
        is_ct = str(ds.get("Modality", "")).upper() == "CT"
        if is_ct and (window is not None or not has_voi):
            preset = window or ct_preset_for(ds.get("BodyPartExamined"))
            for keyword in ("VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction"):
                if keyword in px:
                    delattr(px, keyword)
            px.WindowCenter, px.WindowWidth = CT_PRESETS[preset]
            px.VOILUTFunction = "LINEAR"
            how = f"preset ct-{preset.replace('_', '-')}"
        elif has_voi:
            how = "VOI LUT sequence" if "WindowCenter" not in px else "window (header)"
        else:
            how = "auto {:g}-{:g} %".format(*AUTO_PERCENTILES)
        if how.startswith("auto"):
            counts = np.bincount(frame.view(unsigned).ravel(), minlength=2**bits)[domain.view(unsigned)]
            if padding is not None:
                counts[padding] = 0
            if counts.sum() == 0:
                counts = np.ones_like(counts)
            order = np.argsort(modality, kind="stable")
            cumulative = np.cumsum(counts[order]) / counts.sum()
            lo = modality[order][np.searchsorted(cumulative, AUTO_PERCENTILES[0] / 100)]
            hi = modality[order][min(len(order) - 1, int(np.searchsorted(cumulative, AUTO_PERCENTILES[1] / 100)))]
            scaled = (modality - lo) / (hi - lo) if hi > lo else (modality > lo).astype(np.float64)
        else:
            if "WindowCenter" not in px:
                voi = apply_voi_lut(modality, px, index=0, prefer_lut=True).astype(np.float64)
                bits_out = int(px.VOILUTSequence[0].LUTDescriptor[2])
                y_lo, y_hi = 0.0, float(2**bits_out - 1)
            else:
                voi = apply_voi_lut(modality, px, index=0, prefer_lut=False).astype(np.float64)
                y_lo, y_hi = _output_range(px)
            scaled = (voi - y_lo) / (y_hi - y_lo) if y_hi > y_lo else np.zeros_like(voi)
    values = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    if photometric == "MONOCHROME1":
        values = 255 - values
    if padding is not None:
        values[padding] = 0
    lut = np.zeros(2**bits, dtype=np.uint8)
    lut[domain.view(unsigned)] = values
    return lut, how


def _grey_float(ds: Dataset, px: Dataset, frame: np.ndarray, photometric: str) -> tuple[np.ndarray, str]:
    """Fallback for more than 16 bits or float pixels: float32 min/max scaling."""
    values = apply_modality_lut(frame, px).astype(np.float32, copy=False)
    lo, hi = np.percentile(values, AUTO_PERCENTILES)
    scaled = np.clip((values - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(values)
    out = np.rint(scaled * 255).astype(np.uint8)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return out, "auto {:g}-{:g} %".format(*AUTO_PERCENTILES)


def _to_uint8(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    top = float(2**bits - 1) if bits else float(np.iinfo(rgb.dtype).max)
    return np.clip(np.rint(rgb.astype(np.float32) * (255.0 / top)), 0, 255).astype(np.uint8)


def prepare_image(source: str | Path | Dataset, frame_number: int | None = None,
                  window: str | None = None) -> PreparedImage:
    """Decode one frame of a DICOM image and render it as RGB at its source size.

    The one DICOM-frame-to-display function of the project: the model's input, the pictures of
    ``medrega-gateway render`` (:mod:`sr_writer.render`) and the web pages' annotated images
    (:mod:`gateway.api.render`) are all this picture, so an auditor sees what the model saw.

    ``frame_number`` is 1-based (as Referenced Frame Number); ``None`` means the first frame of a
    multi-frame object and the only frame of a single-frame one. ``window`` names a CT preset
    (:data:`CT_PRESETS`) that replaces the header's window for a CT image (a plan's lung and
    mediastinal renderings of one chest slice); other modalities ignore it.
    """
    if window is not None and window not in CT_PRESETS:
        raise ImagingError(f"unknown CT window {window!r}; known: {sorted(CT_PRESETS)}")
    ds = source if isinstance(source, Dataset) else read_dataset(source)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImagingError("the object has no pixel data")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frame_number is not None and not 1 <= frame_number <= frames:
        raise ImagingError(f"frame {frame_number} does not exist (the object has {frames})")
    index = (frame_number or 1) - 1
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        # as_rgb: pydicom converts YBR_FULL/YBR_FULL_422 with convert_color_space, and the
        # JPEG 2000 decoder undoes YBR_RCT/YBR_ICT, so colour arrives as RGB.
        frame = pixel_array(ds, index=index if frames > 1 else None, as_rgb=True)
    except Exception as exc:  # decoders raise many kinds
        raise ImagingError(f"cannot decode the pixel data ({type(exc).__name__}: {exc})") from exc
    if frames > 1 and frame.ndim == (4 if int(ds.get("SamplesPerPixel", 1)) > 1 else 3):
        frame = frame[0]

    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if frame.ndim != 2:
            raise ImagingError(f"unexpected {photometric} pixel array shape {frame.shape}")
        px = _pixel_module(ds, index)
        if frame.dtype.kind in "iu" and frame.dtype.itemsize <= 2:
            lut, how = _grey_lut(ds, px, frame, photometric, window)
            bits = frame.dtype.itemsize * 8
            grey = np.take(lut, frame.view(np.dtype(f"uint{bits}")))
        else:
            grey, how = _grey_float(ds, px, frame, photometric)
        channel = Image.fromarray(grey, mode="L")
        rgb = Image.merge("RGB", (channel, channel, channel))
    elif photometric == "PALETTE COLOR":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            coloured = apply_color_lut(frame, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        rgb = Image.fromarray(_to_uint8(coloured, bits if coloured.dtype != np.uint8 else 8), mode="RGB")
        how = "colour"
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420"):
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ImagingError(f"unexpected {photometric} pixel array shape {frame.shape}")
        rgb = Image.fromarray(_to_uint8(frame, int(ds.get("BitsStored", 8))), mode="RGB")
        how = "colour"
    else:
        raise ImagingError(f"Photometric Interpretation {photometric!r} is not supported")
    return PreparedImage(
        rgb=rgb,
        rows=rgb.height,
        columns=rgb.width,
        frame_number=(frame_number or 1) if frames > 1 else frame_number,
        number_of_frames=frames,
        photometric_interpretation=photometric,
        voi=how,
    )

