"""Run a labelled set through production's model path and score it.

Every case goes the way an image of a received study goes, so the scores describe what the SRs
would say:

* a DICOM case is read as the node reads a received instance (:func:`dicom_node.header.read_header`),
  described as the worker describes it (:class:`model.selection.SourceImage`, header attributes
  of :func:`model.selection.read_header_attributes`), passed through production's image
  selection (:func:`model.selection.select`: a localizer, dose sheet or derived image is
  excluded with production's reason) and rendered by :func:`model.imaging.prepare_image` with
  the window its plan asks for; a PNG/JPEG case is its picture in RGB;
* the question is the prompt of the image's plan (:func:`model.plans.select_plan`, the
  configured plans file and ``model.prompt_layout``) for the case's task and language, with the
  case's structures, box or option list in the plan's prompt; when the plan has no such prompt
  (MedRegA was not trained for it) the case is reported as not asked, with the reason;
* the answers come from the configured backend (batched: an image is encoded once for all its
  cases), are parsed by :func:`model.parse.parse_answer`, screened by
  :func:`model.checks.screen_text` as the SR text is, mapped to an option by
  :func:`model.classification.map_answer`, and their boxes scored in source pixels
  (:func:`model.geometry.box_to_pixels`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from .cases import CASES_FILE, Case, CaseProblem, read_cases
from .metrics import (
    CaseScore,
    MetricUnavailable,
    score_classification,
    score_detection,
    score_region_to_text,
    score_report,
)
from .summary import Group, ScoredCase, summarise
from .wordnet import load_wordnet

if TYPE_CHECKING:  # pragma: no cover
    from common.settings import ModelSettings
    from model.backends.base import ModelBackend
    from model.plans import PlannedPrompt

__all__ = ["EvaluationResult", "run_evaluation", "SCHEMA"]

SCHEMA = "medrega-gateway/evaluation/1"
PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
#: Cases prepared and asked together (their pictures are held in memory meanwhile).
CHUNK = 32


@dataclass
class _Asked:
    case: Case
    modality: str
    subset: str
    prompt: "PlannedPrompt"
    rgb: Image.Image
    rows: int
    columns: int
    request_uid: str
    options: tuple[str, ...] = ()


@dataclass
class EvaluationResult:
    """A finished evaluation: what metrics.json holds."""

    started_at: datetime
    finished_at: datetime
    dataset: Path
    cases_sha256: str
    case_lines: int
    scored: list[ScoredCase]
    problems: list[CaseProblem]
    groups: list[Group]
    model: dict[str, str]
    plans: dict[str, str]
    resamples: int
    #: What could not be measured on this machine (e.g. METEOR without WordNet).
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_s": (self.finished_at - self.started_at).total_seconds(),
            "dataset": {
                "path": str(self.dataset),
                "cases_sha256": self.cases_sha256,
                "cases": self.case_lines,
                "scored": len(self.scored),
                "skipped": len(self.problems),
            },
            "model": self.model,
            "plans": self.plans,
            "bootstrap": {"resamples": self.resamples, "level": 0.95, "method": "percentile", "seed": 0},
            "notes": self.notes,
            "groups": [g.as_json() for g in self.groups],
            "skipped": [
                {"line": p.line, "id": p.case_id, "kind": p.kind, "reason": p.reason} for p in self.problems
            ],
            "cases": [
                {
                    "id": c.case_id, "line": c.line, "task": c.task, "language": c.language,
                    "modality": c.modality, "subset": c.subset, "prompt": c.prompt, "answer": c.raw_answer,
                    "prediction": c.prediction, "scores": c.score.values,
                }
                for c in self.scored
            ],
        }


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def plans_identity(settings: "ModelSettings") -> dict[str, str]:
    """Which plans and prompt wording produced the questions (digests of the two files)."""
    from model.plans import PLANS_PATH
    from model.prompts import PROMPTS_PATH

    plans = Path(settings.plans_path) if settings.plans_path else PLANS_PATH
    return {
        "path": str(plans),
        "sha256": _sha256(plans),
        "prompts_sha256": _sha256(PROMPTS_PATH),
        "layout": settings.prompt_layout,
    }


# -- preparing a case -------------------------------------------------------------------------
class _NotScored(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


@dataclass(frozen=True)
class _DicomImage:
    modality: str
    body_part: str | None
    view: str | None
    sop_instance_uid: str
    render: Callable[[str | None], Any]


def _dicom_image(case: Case, path: Path, settings: "ModelSettings", renders: dict) -> _DicomImage:
    """A DICOM case read, described and selected as a received instance."""
    from dicom_node.header import HeaderError, read_header
    from model.selection import SourceImage, read_header_attributes, select

    try:
        header = read_header(path)
    except HeaderError as exc:
        raise _NotScored("unreadable", f"{path.name}: not a DICOM object the node would file ({exc})") from None
    source = read_header_attributes(
        SourceImage(
            path=path,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            series_instance_uid=header.series_instance_uid,
            modality=header.modality,
            body_part_examined=header.body_part_examined,
            rows=header.rows,
            columns=header.columns,
            number_of_frames=header.number_of_frames,
            instance_number=header.instance_number,
            image_position_patient=header.image_position_patient,
            image_orientation_patient=header.image_orientation_patient,
        )
    )
    # A case is one image the labeller chose: the per-image rules apply (localizer, dose sheet,
    # derived image, burned-in text), not the rule that picks slices from a volume series.
    selection = select([source], settings.model_copy(update={"min_volume_slices": 1}))
    if not selection.chosen:
        reason = selection.excluded[0].reason if selection.excluded else "not chosen by image selection"
        raise _NotScored("excluded", f"production's image selection leaves it out: {reason}")
    choice = selection.chosen[0]
    frame = case.frame if case.frame is not None else choice.frame_number

    def render(window: str | None) -> Any:
        from model.imaging import ImagingError, prepare_image

        key = (str(path), frame, window)
        if key not in renders:
            try:
                renders[key] = prepare_image(path, frame, window=window)
            except ImagingError as exc:
                raise _NotScored("unreadable", f"{path.name}: {exc}") from None
        return renders[key]

    return _DicomImage(header.modality or "", header.body_part_examined, case.view or choice.view,
                       header.sop_instance_uid, render)


@dataclass(frozen=True)
class _Picture:
    rgb: Image.Image
    rows: int
    columns: int


def _picture(path: Path, renders: dict) -> _Picture:
    key = (str(path), None, None)
    if key not in renders:
        try:
            with Image.open(path) as im:
                im.load()
                rgb = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as exc:
            raise _NotScored("unreadable", f"{path.name}: not a readable PNG/JPEG picture ({exc})") from None
        renders[key] = _Picture(rgb, rgb.height, rgb.width)
    return renders[key]


def _not_trained(task: str, language: str, plan_name: str) -> _NotScored:
    why = {
        "report": "MedRegA's report sets are chest X-ray (MIMIC-CXR, IU-Xray, English) and the demo's "
                  "Chinese report; the plan for this image asks none in this language",
        "grounded_report": "MedRegA's grounded-report set is frontal chest X-ray in English only",
        "detection": "MedRegA's detection (text2region) was trained in English; the plan for this image "
                     "has no detection prompt in this language",
        "region_to_text": "MedRegA's region description (region2text) was trained in English; the plan for "
                          "this image asks no region description in this language",
        "classification": "the plan for this image asks no classification",
    }[task]
    return _NotScored("not_asked", f"{why} (plan {plan_name}, language {language})")


def _question(case: Case, modality: str, body_part: str | None, view: str | None, settings: "ModelSettings") -> tuple["PlannedPrompt", str, tuple[str, ...]]:
    """The plan's prompt for this case: (planned prompt, subset, options)."""
    from model.plans import select_plan
    from model.prompts import prompt_library

    plan = select_plan(modality, body_part, settings.plans_path or None, view, settings.prompt_layout)
    mine = [p for p in plan.prompts if p.task == case.task and p.language == case.language]
    if case.task == "region_to_text":
        follow = plan.follow_up
        if follow is None or follow.prompt.language != case.language:
            raise _not_trained(case.task, case.language, plan.name)
        detection = next((p for p in plan.prompts if p.task == "detection"), None)
        assert case.box is not None  # validated
        x1, y1, x2, y2 = case.box  # four coordinates (BoxList)
        return follow.planned((x1, y1, x2, y2), detection.window if detection else None), "", ()
    if not mine:
        raise _not_trained(case.task, case.language, plan.name)
    if case.task == "classification":
        wanted = {o.casefold() for o in case.options or []}
        for p in mine:
            if {o.casefold() for o in p.options} == wanted:
                return p, p.training_set or "", tuple(p.options)
        trained = "; ".join(f"{p.training_set} ({len(p.options)} options)" for p in mine)
        raise _NotScored(
            "not_asked",
            f"the case's options are not an option list MedRegA was trained with for this image "
            f"(plan {plan.name} asks {trained}); asking an arbitrary list would measure something it never learnt",
        )
    prompt = mine[0]
    if case.task in ("detection", "grounded_report") and case.structures:
        template = prompt_library()[prompt.prompt_id]
        slots = {**dict(prompt.slots), "structures": list(case.structures)}
        prompt = replace(prompt, question=template.render(settings.prompt_layout, **slots))
    return prompt, "", ()


def _prepare(case: Case, folder: Path, settings: "ModelSettings", renders: dict) -> _Asked:
    path = (folder / case.image).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise _NotScored("invalid", f"image {case.image!r} lies outside the dataset folder")
    if not path.is_file():
        raise _NotScored("unreadable", f"image {case.image!r} not found")
    if path.suffix.lower() in PICTURE_SUFFIXES:
        if not case.modality:
            raise _NotScored("invalid", "a PNG/JPEG case needs modality (a picture has no DICOM header)")
        modality = case.modality.strip().upper()
        prompt, subset, options = _question(case, modality, case.body_part, case.view, settings)
        picture = _picture(path, renders)
        return _Asked(case, modality, subset, prompt, picture.rgb, picture.rows, picture.columns, case.id, options)
    dicom = _dicom_image(case, path, settings, renders)
    modality = (case.modality or dicom.modality).strip().upper()
    prompt, subset, options = _question(case, modality, case.body_part or dicom.body_part, dicom.view, settings)
    prepared = dicom.render(prompt.window)
    return _Asked(case, modality, subset, prompt, prepared.rgb, prepared.rows, prepared.columns,
                  dicom.sop_instance_uid, options)


# -- scoring an answer -------------------------------------------------------------------------
def _score(asked: _Asked, raw: str, meteor: bool) -> ScoredCase:
    from model.checks import screen_text
    from model.classification import map_answer
    from model.parse import parse_answer

    case = asked.case
    parsed = parse_answer(raw)
    prediction: Any
    if case.task == "classification":
        options = list(asked.options)
        mapped = map_answer(parsed.text, options)
        # As MedRegA's evaluation: an answer that shares no word with any option takes the
        # first option (the argmax of all-zero BLEU-1 scores); the case records it as unmapped.
        predicted = options.index(mapped.option) if mapped is not None else 0
        reference = [o.casefold() for o in options].index((case.reference.label or "").casefold())
        score = score_classification(reference, predicted, case.language)
        prediction = {"option": options[predicted], "mapped": mapped is not None}
    elif case.task == "detection":
        boxes = [list(b.as_tuple()) for region in parsed.regions for b in region.boxes]
        score = score_detection(boxes, case.reference_boxes, asked.rows, asked.columns)
        score.language = case.language
        prediction = boxes
    elif case.task == "region_to_text":
        score = score_region_to_text(screen_text(parsed.text).text, case.reference.text or "", case.language)
        prediction = parsed.text
    else:  # report, grounded_report
        # A grounded report's text is what its regions say (the SR's finding descriptions).
        described = [r.description for r in parsed.regions if r.description]
        text = screen_text(" ".join(described) if case.task == "grounded_report" and described else parsed.text).text
        score = score_report(text, case.reference.text or "", case.language, meteor=meteor)
        prediction = text
        if case.task == "grounded_report":
            score.task = "grounded_report"
            if case.reference_boxes:
                boxes = [list(b.as_tuple()) for region in parsed.regions for b in region.boxes]
                _merge(score, score_detection(boxes, case.reference_boxes, asked.rows, asked.columns))
                prediction = {"text": text, "boxes": boxes}
    return ScoredCase(case.id, case.line, case.task, case.language, asked.modality, asked.subset,
                      asked.prompt.question, raw, prediction, score, asked.options)


def _merge(into: CaseScore, other: CaseScore) -> None:
    into.values.update(other.values)
    into.pooled.update(other.pooled)
    into.ious.extend(other.ious)


# -- the run ------------------------------------------------------------------------------------
def run_evaluation(
    folder: Path,
    backend: "ModelBackend",
    settings: "ModelSettings",
    *,
    progress: Callable[[int, int], None] | None = None,
    resamples: int = 1000,
) -> EvaluationResult:
    """Ask and score every case of ``folder``; ``progress(done, total)`` after each chunk."""
    from model.backends.base import GenerationRequest

    started = datetime.now(timezone.utc)
    clock = time.perf_counter()
    cases, problems = read_cases(folder)
    notes: list[str] = []
    try:
        load_wordnet()
        meteor = True
    except MetricUnavailable as exc:
        meteor = False
        notes.append(f"METEOR not computed: {exc}")
    case_lines = len(cases) + len(problems)
    # Cases of one image next to each other: its rendering (and its features) serve them all.
    cases.sort(key=lambda c: (c.image, c.frame or 0, c.line))
    scored: list[ScoredCase] = []
    total = len(cases)
    if progress is not None:
        progress(0, total)
    for start in range(0, total, CHUNK):
        renders: dict = {}
        asked: list[_Asked] = []
        for case in cases[start : start + CHUNK]:
            try:
                asked.append(_prepare(case, folder, settings, renders))
            except _NotScored as exc:
                problems.append(CaseProblem(case.line, case.id, exc.reason, exc.kind))
        if asked:
            requests = [
                GenerationRequest(image=a.rgb, question=a.prompt.question, language=a.prompt.language,
                                  sop_instance_uid=a.request_uid, frame_number=a.case.frame)
                for a in asked
            ]
            answers = backend.generate_answers(requests)
            for a, answer in zip(asked, answers):
                scored.append(_score(a, answer.text, meteor))
        if progress is not None:
            progress(min(start + CHUNK, total), total)
    problems.sort(key=lambda p: p.line)
    groups = summarise(scored, resamples=resamples)
    identity = backend.identity
    finished = datetime.now(timezone.utc)
    return EvaluationResult(
        started_at=started,
        finished_at=finished,
        dataset=folder.resolve(),
        cases_sha256=_sha256(folder / CASES_FILE),
        case_lines=case_lines,
        scored=sorted(scored, key=lambda c: c.line),
        problems=problems,
        groups=groups,
        model={"backend": identity.backend, "name": identity.name, "version": identity.version,
               "weights_id": identity.weights_id},
        plans=plans_identity(settings),
        resamples=resamples,
        notes=notes,
        extra={"wall_s": time.perf_counter() - clock},
    )
