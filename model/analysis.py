"""One study through the model: the single entry point the Celery worker calls.

:func:`analyse` chooses the images (:mod:`model.selection`, every exclusion with its reason),
picks each image's plan by modality, body part and view (:mod:`model.plans`), renders each chosen
image or frame once per CT window its plan needs (:mod:`model.imaging`), asks every prompt of the
plan, then asks the plan's follow-up (region2text) about
each box its detection prompts found; each round is one backend call for the whole study (the
engine encodes each image once and batches prompts across images). Answers are parsed (:mod:`model.parse`), checked
(:mod:`model.checks`: truncation, de-identification blanks, prior-study references), mapped to a
trained option for classification prompts (:mod:`model.classification`), their boxes mapped to
source pixels, and the same finding in English and Chinese given one ``match_key`` (best IoU >=
0.5, one to one, :mod:`model.geometry`), from which the SR writer derives a shared Tracking UID.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.settings import ModelSettings

from .backends.base import GeneratedAnswer, GenerationRequest, ModelBackend
from .checks import Removed, screen_text
from .classification import MappedOption, map_answer
from .geometry import box_to_pixels, match_boxes
from .imaging import ImagingError, PreparedImage, prepare_image
from .parse import parse_answer
from .plans import Plan, PlannedPrompt, select_plan
from .selection import ImageChoice, Selection, SourceImage, select, slice_positions

__all__ = ["SourceImage", "RegionResult", "RunResult", "StudyAnalysis", "analyse", "analyse_study",
           "number_regions", "IOU_MATCH_THRESHOLD"]

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
    #: The language of ``description`` (a region2text answer describing a detection box is English).
    description_language: str | None = None


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
    text: str  # answer text without region markup, unusable sentences taken out
    unparsed: bool
    regions: list[RegionResult]
    plan: str = ""
    prompt_id: str = ""
    training_set: str | None = None
    window: str | None = None
    view: str | None = None
    #: Generation stopped at max_new_tokens without <|im_end|>.
    truncated: bool = False
    #: The trained option a classification answer maps to (None: no option shares a word).
    classification: MappedOption | None = None
    #: Sentences taken out of the text or descriptions (de-identification blank, prior study).
    removed: tuple[Removed, ...] = ()
    #: For a region2text follow-up: the match key of the detection box it describes.
    describes: str | None = None


@dataclass(frozen=True)
class StudyAnalysis:
    """Everything one study's analysis decided and produced."""

    runs: list[RunResult]
    selection: Selection
    #: Chosen images that could not be decoded, with the reason.
    skipped: list[tuple[SourceImage, str]] = field(default_factory=list)
    #: The plan each chosen image got: (choice, plan name).
    plans: list[tuple[ImageChoice, str]] = field(default_factory=list)


@dataclass
class _Pending:
    choice: ImageChoice
    prepared: PreparedImage
    prompt: PlannedPrompt
    plan: Plan
    answer: GeneratedAnswer = field(default_factory=lambda: GeneratedAnswer(""))
    duration_s: float = 0.0
    #: (detection pending index in the image's list, box index) for a follow-up.
    describes: tuple[int, int] | None = None


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _screen(text: str | None) -> tuple[str | None, tuple[Removed, ...]]:
    if not text:
        return text, ()
    screened = screen_text(text)
    return screened.text, screened.removed


def _results_for_image(pending: list[_Pending]) -> list[RunResult]:
    """Parse one image's answers, check them and key its boxes across languages."""
    first = pending[0]
    rows, columns = first.prepared.rows, first.prepared.columns
    parsed = [parse_answer(p.answer.text) for p in pending]
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
    # The region2text answer about a detection box becomes that box's description.
    described: dict[tuple[int, int], _Pending] = {p.describes: p for p in pending if p.describes is not None}
    regions: list[list[RegionResult]] = [[] for _ in pending]
    removed: list[list[Removed]] = [[] for _ in pending]
    box_key: dict[tuple[int, int], str] = {}
    box_counter: dict[int, int] = {}
    for n, (i, label, description, box, pixels) in enumerate(boxes):
        k = box_counter.get(i, 0)
        box_counter[i] = k + 1
        box_key[(i, k)] = keys[n]
        language = pending[i].prompt.language if description else None
        follow = described.get((i, k))
        if follow is not None and follow.answer.text.strip():
            description = follow.answer.text.strip()
            language = follow.prompt.language
        description, out = _screen(description)
        removed[i].extend(out)
        regions[i].append(RegionResult(label, description or None, box, pixels, keys[n], language if description else None))
    results = []
    for i, (p, answer) in enumerate(zip(pending, parsed)):
        text, out = _screen(answer.text) if p.prompt.task in ("report", "vqa") or not answer.regions else (answer.text, ())
        classification = map_answer(answer.text, p.prompt.options) if p.prompt.options else None
        results.append(
            RunResult(
                image=p.choice.image,
                frame_number=p.choice.frame_number,
                selection_reason=p.choice.reason,
                language=p.prompt.language,
                task=p.prompt.task,
                prompt=p.prompt.question,
                raw_answer=p.answer.text,
                duration_s=p.duration_s,
                text=text or "",
                unparsed=answer.unparsed,
                regions=regions[i],
                plan=p.plan.name,
                prompt_id=p.prompt.prompt_id,
                training_set=p.prompt.training_set,
                window=p.prompt.window,
                view=p.choice.view,
                truncated=p.answer.truncated,
                classification=classification,
                removed=tuple(removed[i]) + tuple(out),
                describes=box_key.get(p.describes) if p.describes is not None else None,
            )
        )
    return results


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


def analyse(
    images: Sequence[SourceImage],
    backend: ModelBackend,
    settings: ModelSettings,
    progress: Callable[[str], None] | None = None,
) -> StudyAnalysis:
    """Run the plan of every chosen image of one study; runs in image order, then plan order.

    An image that cannot be decoded is reported through ``progress`` and in ``skipped`` and left
    out; errors of the backend propagate (the worker retries the job).
    """
    selection = select(images, settings)
    choices = selection.chosen
    _say(progress, f"{len(choices)} image(s) chosen of {len(images)} instance(s), "
                   f"{len(selection.excluded)} exclusion(s) recorded")
    plans_path = settings.plans_path or None
    per_image: list[list[_Pending]] = []
    skipped: list[tuple[SourceImage, str]] = []
    planned: list[tuple[ImageChoice, str]] = []

    def ask(batch: list[_Pending]) -> None:
        """One backend call for a whole round: the engine encodes each image once (all its
        prompts hold the same prepared RGB object) and batches prompts across images
        (model.backends.engine, ``settings.batch_size`` at a time)."""
        if not batch:
            return
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
        answers = backend.generate_answers(
            requests, progress=lambda done, total: _say(progress, f"answered {done} of {total} question(s)")
        )
        elapsed = time.perf_counter() - start
        if len(answers) != len(batch):
            raise RuntimeError(f"backend returned {len(answers)} answers for {len(batch)} questions")
        for p, answer in zip(batch, answers):
            p.answer = answer
            p.duration_s = elapsed / len(batch)
        images = len({id(p.prepared) for p in batch})
        _say(progress, f"answered {len(batch)} question(s) about {images} rendering(s) in {elapsed:.1f} s")

    for n, choice in enumerate(choices, start=1):
        plan = select_plan(choice.image.modality, choice.image.body_part_examined, plans_path,
                           view=choice.view, layout=settings.prompt_layout)
        renderings: dict[str | None, PreparedImage] = {}
        try:
            for window in dict.fromkeys(p.window for p in plan.prompts):
                renderings[window] = prepare_image(choice.image.path, choice.frame_number, window)
        except ImagingError as exc:
            _say(progress, f"skipped {choice.image.sop_instance_uid}: {exc}")
            skipped.append((choice.image, str(exc)))
            continue
        planned.append((choice, plan.name))
        pending = [_Pending(choice, renderings[prompt.window], prompt, plan) for prompt in plan.prompts]
        per_image.append(pending)
        _say(progress, f"image {n}/{len(choices)}: {choice.reason}; plan {plan.name}, {len(pending)} prompt(s)")
    ask([p for pending in per_image for p in pending])

    # Follow-up: region2text about each box the detection prompts found.
    follow_ups: list[_Pending] = []
    for pending in per_image:
        plan = pending[0].plan
        if plan.follow_up is None:
            continue
        extra: list[_Pending] = []
        for i, p in enumerate(list(pending)):
            if p.prompt.task != "detection":
                continue
            boxes = [b.as_tuple() for r in parse_answer(p.answer.text).regions for b in r.boxes]
            for k, box in enumerate(boxes):
                if len(extra) >= plan.follow_up.max_boxes:
                    break
                extra.append(_Pending(p.choice, p.prepared, plan.follow_up.planned(box, p.prompt.window), plan,
                                      describes=(i, k)))
        pending.extend(extra)
        follow_ups.extend(extra)
    if follow_ups:
        _say(progress, f"describing {len(follow_ups)} detected region(s)")
        ask(follow_ups)

    runs: list[RunResult] = []
    for pending in per_image:
        runs.extend(_results_for_image(pending))
        for p in pending:  # free the pixels as soon as the image is done
            p.prepared = None  # type: ignore[assignment]  # freed: nothing reads it after its image is done
    return StudyAnalysis(runs=runs, selection=selection, skipped=skipped, plans=planned)


def analyse_study(
    images: Sequence[SourceImage],
    backend: ModelBackend,
    settings: ModelSettings,
    progress: Callable[[str], None] | None = None,
    skipped: list[tuple[SourceImage, str]] | None = None,
) -> list[RunResult]:
    """The runs of :func:`analyse` (``skipped``, when given, receives the undecodable images)."""
    result = analyse(images, backend, settings, progress)
    if skipped is not None:
        skipped.extend(result.skipped)
    return result.runs
