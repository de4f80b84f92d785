"""One study through the model: the single entry point the Celery worker calls.

:func:`analyse_study` chooses the images (:mod:`model.selection`), renders each chosen image or
frame once (:mod:`model.imaging`), asks every prompt of its plan (:mod:`model.plans`) in both
languages in one backend call (the engine encodes each image once and batches the prompts of
all images, ``settings.batch_size`` at a time), parses the answers (:mod:`model.parse`), maps the
boxes to source pixels and gives the same finding in English and Chinese one ``match_key``
(best IoU >= 0.5, one to one, :mod:`model.geometry`), from which the SR writer derives a shared
Tracking UID.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.settings import ModelSettings

from .backends.base import GenerationRequest, ModelBackend
from .geometry import box_to_pixels, match_boxes
from .imaging import ImagingError, PreparedImage, prepare_image
from .parse import parse_answer
from .plans import PlannedPrompt, plan_for
from .selection import ImageChoice, SourceImage, select_images, slice_positions

__all__ = ["SourceImage", "RegionResult", "RunResult", "analyse_study", "number_regions", "IOU_MATCH_THRESHOLD"]

IOU_MATCH_THRESHOLD = 0.5


@dataclass(frozen=True)
class RegionResult:
    """One box of one finding."""

    label: str
    description: str | None
    box: tuple[int, int, int, int]  # 0-999
    pixels: tuple[float, float, float, float]  # x1, y1, x2, y2 in source pixels, clipped
    #: Same value for the same finding in en and zh (IoU matching) -> shared Tracking UID.
    match_key: str


@dataclass(frozen=True)
class RunResult:
    """One prompt on one image."""

    image: SourceImage
    frame_number: int | None
    selection_reason: str
    language: str
    task: str
    prompt: str
    raw_answer: str
    duration_s: float
    text: str  # answer text without region markup (report text / descriptions)
    unparsed: bool
    regions: list[RegionResult]


@dataclass
class _Pending:
    choice: ImageChoice
    prepared: PreparedImage
    prompt: PlannedPrompt
    answer: str = ""
    duration_s: float = 0.0


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _results_for_image(pending: list[_Pending]) -> list[RunResult]:
    """Parse one image's answers and key its boxes across languages."""
    first = pending[0]
    rows, columns = first.prepared.rows, first.prepared.columns
    parsed = [parse_answer(p.answer) for p in pending]
    # Every box of the image: (run index, label, description, box, pixels)
    boxes = [
        (i, region.label, region.description, box.as_tuple(), box_to_pixels(box.as_tuple(), rows, columns))
        for i, answer in enumerate(parsed)
        for region in answer.regions
        for box in region.boxes
    ]
    en = [n for n, b in enumerate(boxes) if pending[b[0]].prompt.language == "en"]
    zh = [n for n, b in enumerate(boxes) if pending[b[0]].prompt.language == "zh"]
    uid = first.choice.image.sop_instance_uid
    frame = first.choice.frame_number or 0
    keys: dict[int, str] = {}
    counter = 0
    for i, j in match_boxes([boxes[n][4] for n in en], [boxes[n][4] for n in zh], IOU_MATCH_THRESHOLD):
        counter += 1
        keys[en[i]] = keys[zh[j]] = f"{uid}/{frame}/{counter}"
    for n in range(len(boxes)):
        if n not in keys:
            counter += 1
            keys[n] = f"{uid}/{frame}/{counter}"
    regions: list[list[RegionResult]] = [[] for _ in pending]
    for n, (i, label, description, box, pixels) in enumerate(boxes):
        regions[i].append(RegionResult(label, description, box, pixels, keys[n]))
    return [
        RunResult(
            image=p.choice.image,
            frame_number=p.choice.frame_number,
            selection_reason=p.choice.reason,
            language=p.prompt.language,
            task=p.prompt.task,
            prompt=p.prompt.question,
            raw_answer=p.answer,
            duration_s=p.duration_s,
            text=answer.text,
            unparsed=answer.unparsed,
            regions=regions[i],
        )
        for i, (p, answer) in enumerate(zip(pending, parsed))
    ]


def _study_order(image: SourceImage, frame_number: int | None, region: RegionResult) -> tuple:
    """Where a box stands in the study: series, instance, slice position, frame, then place in the image."""
    position = slice_positions([image])
    missing = float("inf")
    return (
        image.series_number if image.series_number is not None else missing,
        image.instance_number if image.instance_number is not None else missing,
        position[0] if position else 0.0,
        frame_number or 0,
        region.pixels[1],  # top edge, then left edge: reading order within the image
        region.pixels[0],
        region.match_key,
    )


def number_regions(results: Sequence[RunResult]) -> dict[str, int]:
    """Region number (1, 2, ...) of every ``match_key``, in the study's order, not arrival order.

    The order is Series Number, Instance Number, position along the slice normal, frame, then the
    box's top-left corner; a finding seen in both languages takes its first place. The same study
    therefore numbers the same boxes alike whatever order its instances arrived in.
    """
    first: dict[str, tuple] = {}
    for result in results:
        for region in result.regions:
            key = _study_order(result.image, result.frame_number, region)
            if region.match_key not in first or key < first[region.match_key]:
                first[region.match_key] = key
    ordered = sorted(first, key=first.__getitem__)
    return {match_key: number for number, match_key in enumerate(ordered, start=1)}


def analyse_study(
    images: Sequence[SourceImage],
    backend: ModelBackend,
    settings: ModelSettings,
    progress: Callable[[str], None] | None = None,
    skipped: list[tuple[SourceImage, str]] | None = None,
) -> list[RunResult]:
    """Run the plan of every chosen image of one study; results in image order, then plan order.

    An image that cannot be decoded is reported through ``progress``, appended with the reason
    to ``skipped`` (when given) and left out; errors of the backend propagate (the worker
    retries the job).
    """
    choices = select_images(images, settings)
    _say(progress, f"{len(choices)} image(s) chosen of {len(images)} instance(s)")
    plans_path = settings.plans_path or None
    per_image: list[list[_Pending]] = []
    for n, choice in enumerate(choices, start=1):
        try:
            prepared = prepare_image(choice.image.path, choice.frame_number)
        except ImagingError as exc:
            _say(progress, f"skipped {choice.image.sop_instance_uid}: {exc}")
            if skipped is not None:
                skipped.append((choice.image, str(exc)))
            continue
        prompts = plan_for(choice.image.modality, choice.image.body_part_examined, plans_path)
        per_image.append([_Pending(choice, prepared, prompt) for prompt in prompts])
        _say(progress, f"image {n}/{len(choices)}: {choice.reason}; {len(prompts)} prompt(s)")
    # The whole study in one call: the backend encodes each image once (all its prompts hold the
    # same prepared RGB object) and batches prompts across images (model.backends.engine).
    batch = [p for pending in per_image for p in pending]
    if batch:
        requests = [
            GenerationRequest(
                image=p.prepared.rgb,
                question=p.prompt.question,
                language=p.prompt.language,
                sop_instance_uid=p.choice.image.sop_instance_uid,
                frame_number=p.choice.frame_number,
            )
            for p in batch
        ]
        start = time.perf_counter()
        answers = backend.generate(requests)
        elapsed = time.perf_counter() - start
        if len(answers) != len(batch):
            raise RuntimeError(f"backend returned {len(answers)} answers for {len(batch)} questions")
        for p, answer in zip(batch, answers):
            p.answer = answer
            p.duration_s = elapsed / len(batch)
        _say(progress, f"answered {len(batch)} question(s) about {len(per_image)} image(s) in {elapsed:.1f} s")
    results: list[RunResult] = []
    for pending in per_image:
        results.extend(_results_for_image(pending))
        for p in pending:  # free the pixels as soon as the image is done
            p.prepared = None  # type: ignore[assignment]
    return results
