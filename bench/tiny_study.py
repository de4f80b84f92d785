"""One study through the ``tiny`` backend on CPU, time per stage.

The study: one 2048x2048 chest radiograph (DX) and a 40-slice 512x512 abdominal CT series,
written as DICOM files. Stages are timed with the same functions ``analyse_study`` calls, then
the whole ``analyse_study`` is timed once more end to end.

    .venv/bin/python bench/tiny_study.py [--max-new-tokens 32] [--threads 1]
    .venv/bin/python bench/tiny_study.py --quick    # 4 CT slices, 4 new tokens: the test suite's run

One torch thread by default: on a shared 2-core machine two OpenMP threads spin against other
processes and the generate time swings 5-10x between runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.settings import ModelSettings  # noqa: E402
from model.analysis import analyse_study  # noqa: E402
from model.backends import GenerationRequest, load_backend  # noqa: E402
from model.geometry import box_to_pixels  # noqa: E402
from model.imaging import prepare_image  # noqa: E402
from model.parse import parse_answer  # noqa: E402
from model.plans import plan_for  # noqa: E402
from model.selection import SourceImage, select_images  # noqa: E402


def _write(folder: Path, pixels: np.ndarray, **attrs) -> SourceImage:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = attrs["SOPClassUID"]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes()
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return SourceImage(
        path, ds.SOPInstanceUID, ds.SOPClassUID, ds.SeriesInstanceUID, ds.Modality, ds.get("BodyPartExamined"),
        ds.Rows, ds.Columns, None, int(ds.InstanceNumber),
        [float(v) for v in ds.ImagePositionPatient] if "ImagePositionPatient" in ds else None,
        [float(v) for v in ds.ImageOrientationPatient] if "ImageOrientationPatient" in ds else None,
    )


def make_study(folder: Path, slices: int = 40) -> list[SourceImage]:
    rng = np.random.default_rng(0)
    study = generate_uid()
    images = [
        _write(folder, rng.integers(0, 4096, (2048, 2048)).astype(np.uint16), SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1",
               StudyInstanceUID=study, SeriesInstanceUID=generate_uid(), Modality="DX", BodyPartExamined="CHEST",
               InstanceNumber=1, WindowCenter=2048, WindowWidth=4096)
    ]
    series = generate_uid()
    for i in range(slices):
        images.append(
            _write(folder, (rng.integers(0, 1500, (512, 512)) + 24).astype(np.int16), SOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                   StudyInstanceUID=study, SeriesInstanceUID=series, Modality="CT", BodyPartExamined="ABDOMEN",
                   InstanceNumber=slices - i, ImagePositionPatient=[0, 0, 2.5 * i], ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                   RescaleSlope=1, RescaleIntercept=-1024)
        )
    return images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slices", type=int, default=40, help="CT slices in the study")
    parser.add_argument("--quick", action="store_true",
                        help="4 CT slices, 4 new tokens (the test suite's run)")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.max_new_tokens = 4, 4
    import torch

    torch.set_num_threads(args.threads)
    settings = ModelSettings(backend="tiny", device="cpu", max_new_tokens=args.max_new_tokens, batch_size=4, slices_per_volume=3)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        images = make_study(Path(tmp), args.slices)
        t = time.perf_counter()
        backend = load_backend(settings)
        rows.append(("load tiny backend (build model, train tokenizer)", time.perf_counter() - t, ""))
        t = time.perf_counter()
        choices = select_images(images, settings)
        rows.append(("select images", time.perf_counter() - t, f"{len(choices)} of {len(images)}"))
        t = time.perf_counter()
        prepared = [prepare_image(c.image.path, c.frame_number) for c in choices]
        rows.append(("prepare images (DICOM -> RGB)", time.perf_counter() - t, f"{len(prepared)} images"))
        requests = [
            GenerationRequest(p.rgb, q.question, q.language)
            for c, p in zip(choices, prepared)
            for q in plan_for(c.image.modality, c.image.body_part_examined)
        ]
        t = time.perf_counter()
        backend.generate(requests[:1])
        rows.append(("first generate call (warm-up, one prompt)", time.perf_counter() - t, ""))
        t = time.perf_counter()
        answers: list[str] = []
        for i in range(0, len(requests), settings.batch_size):
            answers.extend(backend.generate(requests[i : i + settings.batch_size]))
        gen = time.perf_counter() - t
        rows.append(("generate (batches of 4)", gen, f"{len(requests)} prompts, <= {args.max_new_tokens} new tokens each"))
        t = time.perf_counter()
        for a, p in zip(answers, [p for p in prepared for _ in range(4)]):
            for region in parse_answer(a).regions:
                for box in region.boxes:
                    box_to_pixels(box.as_tuple(), p.rows, p.columns)
        rows.append(("parse answers + map boxes", time.perf_counter() - t, ""))
        t = time.perf_counter()
        results = analyse_study(images, backend, settings)
        rows.append(("analyse_study end to end (all of the above but loading)", time.perf_counter() - t, f"{len(results)} runs"))
    print("| stage | seconds | note |\n|---|---|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.3f} | {note} |")


if __name__ == "__main__":
    main()
