"""Image preparation throughput: model.imaging.prepare_image against a naive pydicom path.

Both paths read the file, decode, apply the Modality LUT and the header's VOI window and produce
an 8-bit RGB Pillow image of the same pixels (checked: they differ by at most 1 grey level).

naive: ``ds.pixel_array`` -> ``apply_modality_lut`` -> ``apply_voi_lut`` (float64 images) ->
       scale to 0-255 -> ``Image.fromarray(...).convert("RGB")``
ours:  ``prepare_image(path)``: the same pydicom functions on the table of possible stored values,
       then one lookup per pixel.

Corpora (generated, uncompressed Explicit VR Little Endian): 512x512 CT slices (int16, rescale
slope/intercept, window 40/400) and 2048x2048 radiographs (12 bits in 16, MONOCHROME1, window).
Rounds are interleaved (naive, then ours); rates are medians over the rounds, the speed-up is
the median (and range) of the per-round ratios, which is robust to load from other processes.

    .venv/bin/python bench/image_prep.py [--ct 100] [--radiographs 8] [--rounds 7]
    .venv/bin/python bench/image_prep.py --quick    # 4 CT, 1 radiograph, 1 round: the test suite's run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model.imaging import prepare_image  # noqa: E402

warnings.filterwarnings("ignore", module="pydicom")


def _dataset(pixels: np.ndarray, *, modality: str, sop_class: str, photometric: str, bits_stored: int,
             window: tuple[float, float], rescale: tuple[float, float] | None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:g}", f"{rescale[1]:g}"
    ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
    ds.PixelData = pixels.tobytes()
    return ds


def make_corpus(folder: Path, n_ct: int, n_radiographs: int) -> dict[str, list[Path]]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    body = ((yy - 256) ** 2 + (xx - 256) ** 2) < 230**2
    ct: list[Path] = []
    for i in range(n_ct):
        hu = np.where(body, rng.normal(40, 60, (512, 512)), -1000)
        stored = np.clip(hu + 1024, -2048, 4095).astype(np.int16)
        ds = _dataset(stored, modality="CT", sop_class="1.2.840.10008.5.1.4.1.1.2", photometric="MONOCHROME2",
                      bits_stored=16, window=(40, 400), rescale=(1, -1024))
        p = folder / f"ct{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        ct.append(p)
    xr: list[Path] = []
    for i in range(n_radiographs):
        yy, xx = np.mgrid[0:2048, 0:2048]
        base = 1500 + 1200 * np.sin(xx / 300.0) * np.cos(yy / 400.0)
        stored = np.clip(base + rng.normal(0, 80, (2048, 2048)), 0, 4095).astype(np.uint16)
        ds = _dataset(stored, modality="DX", sop_class="1.2.840.10008.5.1.4.1.1.1.1", photometric="MONOCHROME1",
                      bits_stored=12, window=(2048, 3000), rescale=None)
        p = folder / f"dx{i}.dcm"
        ds.save_as(p, enforce_file_format=True)
        xr.append(p)
    return {"CT 512x512": ct, "radiograph 2048x2048": xr}


def naive(path: Path) -> Image.Image:
    ds = pydicom.dcmread(path)
    values = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    if "RescaleSlope" in ds:  # output range of pydicom's windowing
        lo = -(2 ** (ds.BitsStored - 1)) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        hi = (2 ** (ds.BitsStored - 1) - 1) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    else:
        lo, hi = 0.0, float(2**ds.BitsStored - 1)
    grey = np.rint(np.clip((values - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        grey = 255 - grey
    return Image.fromarray(grey, mode="L").convert("RGB")


def ours(path: Path) -> Image.Image:
    return prepare_image(path).rgb


def run(paths: list[Path], fn) -> float:
    start = time.perf_counter()
    for p in paths:
        fn(p)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=int, default=100)
    parser.add_argument("--radiographs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true",
                        help="4 CT slices, 1 radiograph, 1 round (the test suite's run)")
    args = parser.parse_args()
    if args.quick:
        args.ct, args.radiographs, args.rounds = 4, 1, 1
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp), args.ct, args.radiographs)
        for name, paths in corpus.items():
            diff = np.abs(np.asarray(naive(paths[0]), int) - np.asarray(ours(paths[0]), int)).max()
            assert diff <= 1, f"{name}: the two paths disagree by {diff}"
            naive_rates, our_rates, ratios = [], [], []
            run(paths[:2], naive), run(paths[:2], ours)  # warm the page cache and imports
            for _ in range(args.rounds):
                naive_rates.append(run(paths, naive))
                our_rates.append(run(paths, ours))
                ratios.append(our_rates[-1] / naive_rates[-1])
            n, o = statistics.median(naive_rates), statistics.median(our_rates)
            print(
                f"| {name} | {len(paths)} | {n:.1f} img/s | {o:.1f} img/s | {statistics.median(ratios):.2f}x "
                f"({min(ratios):.2f}-{max(ratios):.2f}) | {diff} |"
            )

if __name__ == "__main__":
    print("| corpus | images | naive pydicom + Pillow | model.imaging | speed-up (range) | max grey diff |")
    print("|---|---|---|---|---|---|")
    main()
