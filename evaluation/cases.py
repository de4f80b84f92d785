"""A labelled evaluation set: ``cases.jsonl`` in a folder, one case per line.

Each line is a JSON object::

    {"id": "cxr-001", "image": "images/cxr-001.dcm", "task": "classification",
     "language": "en", "options": ["Cardiomegaly", "..."], "reference": {"label": "Cardiomegaly"}}

``image`` is a DICOM file (PS3.10) or a PNG/JPEG picture, relative to the folder. ``task`` is
one of :data:`TASKS`; ``language`` ``en`` or ``zh``. Task inputs: ``structures`` (detection,
optionally grounded_report), ``box`` ``[x1, y1, x2, y2]`` in 0-999 (region_to_text),
``options`` (classification). ``reference``: ``text`` (report, region_to_text,
grounded_report), ``label`` (classification, one of ``options``), ``boxes``
``{label: [[x1, y1, x2, y2], ...]}`` in 0-999 (detection; optionally grounded_report).
A DICOM case takes Modality, Body Part Examined and the view from its header; a picture has no
header, so its case names ``modality`` (and may name ``body_part`` and ``view``). ``frame``
(1-based) picks a frame of a multi-frame object.

:func:`read_cases` never stops at a bad line: every line it cannot use becomes a
:class:`CaseProblem` (reported and skipped by the evaluation, never counted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = ["TASKS", "CASES_FILE", "Case", "CaseProblem", "read_cases"]

TASKS = ("report", "classification", "detection", "region_to_text", "grounded_report")
CASES_FILE = "cases.jsonl"

Coordinate = Annotated[int, Field(ge=0, le=999)]
BoxList = Annotated[list[Coordinate], Field(min_length=4, max_length=4)]


class Reference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    label: str | None = None
    boxes: dict[str, list[BoxList]] | None = None


class Case(BaseModel):
    """One labelled case (validated)."""

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    image: str
    task: Literal["report", "classification", "detection", "region_to_text", "grounded_report"]
    language: Literal["en", "zh"]
    structures: list[str] | None = None
    box: BoxList | None = None
    options: list[str] | None = None
    reference: Reference
    modality: str | None = None
    body_part: str | None = None
    view: Literal["frontal", "lateral", "other"] | None = None
    frame: int | None = Field(None, ge=1)
    #: 1-based line in cases.jsonl (set by read_cases).
    line: int = 0

    @model_validator(mode="after")
    def _task_inputs(self) -> "Case":
        ref = self.reference
        if self.task in ("report", "region_to_text", "grounded_report") and not (ref.text or "").strip():
            raise ValueError(f"a {self.task} case needs reference.text")
        if self.task == "region_to_text" and self.box is None:
            raise ValueError("a region_to_text case needs box [x1, y1, x2, y2] (0-999)")
        if self.task == "classification":
            if not self.options or len(self.options) < 2:
                raise ValueError("a classification case needs options (two or more)")
            if ref.label is None or ref.label not in self.options:
                raise ValueError("reference.label must be one of options")
        if self.task == "detection":
            if not self.structures:
                raise ValueError("a detection case needs structures")
            if not ref.boxes or not any(ref.boxes.values()):
                raise ValueError("a detection case needs reference.boxes {label: [[x1, y1, x2, y2], ...]}")
        for boxes in (ref.boxes or {}).values():
            for b in boxes:
                if b[0] > b[2] or b[1] > b[3]:
                    raise ValueError(f"box {b} is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2")
        if self.box is not None and (self.box[0] > self.box[2] or self.box[1] > self.box[3]):
            raise ValueError(f"box {self.box} is not [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2")
        return self

    @property
    def reference_boxes(self) -> list[list[int]]:
        """Every reference box, label after label as listed."""
        return [list(b) for boxes in (self.reference.boxes or {}).values() for b in boxes]


@dataclass(frozen=True)
class CaseProblem:
    """A case that was not scored, and why (reported, never counted)."""

    line: int
    case_id: str
    reason: str
    #: "invalid" (the line), "unreadable" (the image), "excluded" (image selection rules),
    #: "not_asked" (no trained prompt for it).
    kind: str


def read_cases(folder: Path) -> tuple[list[Case], list[CaseProblem]]:
    """The valid cases of ``folder/cases.jsonl`` and a problem for every other line.

    Raises :class:`FileNotFoundError` when the file is missing.
    """
    path = folder / CASES_FILE
    cases: list[Case] = []
    problems: list[CaseProblem] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw, dict):
                    raise ValueError("not a JSON object")
                raw.setdefault("id", f"line-{number}")
                case = Case.model_validate({**raw, "line": number})
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                problems.append(CaseProblem(number, _id_of(line, number), f"{where}: {first['msg']}".lstrip(": "), "invalid"))
                continue
            except ValueError as exc:
                problems.append(CaseProblem(number, f"line-{number}", f"not a JSON object: {exc}", "invalid"))
                continue
            if case.id in seen:
                problems.append(CaseProblem(number, case.id, f"id {case.id!r} used twice", "invalid"))
                continue
            seen.add(case.id)
            cases.append(case)
    return cases, problems


def _id_of(line: str, number: int) -> str:
    try:
        value = json.loads(line).get("id")
    except (ValueError, AttributeError):
        return f"line-{number}"
    return str(value) if value else f"line-{number}"
