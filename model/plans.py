"""Task plans: which trained prompts each image gets, by Modality, Body Part Examined and view.

Plans are data (``model/plans.toml``, or the file ``settings.model.plans_path`` names), validated
when loaded: every prompt id exists in the library (:mod:`model.prompts`), every slot renders,
every window is a known CT preset, locate-and-describe is asked only with ``diseases``, and the
last plan matches everything. See the data file for the matching rules.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from .imaging import CT_PRESETS
from .prompts import LAYOUTS, REGION_TASKS, Prompt, PromptError, prompt_library

__all__ = [
    "PLANS_PATH",
    "VIEWS",
    "PlanError",
    "PlannedPrompt",
    "FollowUp",
    "Plan",
    "load_plans",
    "select_plan",
    "plan_for",
]

PLANS_PATH = Path(__file__).with_name("plans.toml")
#: Views a plan may ask for (model.selection.view_of decides an image's view).
VIEWS = frozenset({"frontal", "lateral", "other"})


class PlanError(ValueError):
    """The plans file is missing, malformed or incomplete; the message names the plan."""


@dataclass(frozen=True)
class PlannedPrompt:
    """One question to ask about one image."""

    task: str
    language: str
    question: str
    prompt_id: str = ""
    #: The training set whose instruction the question carries (None: the demo's Chinese wording).
    training_set: str | None = None
    #: The trained options of a classification prompt.
    options: tuple[str, ...] = ()
    #: CT window preset to render the image with (None: header window or body-part preset).
    window: str | None = None
    #: The slot values the plan filled in (evaluate asks the same prompt with a case's own).
    slots: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_region(self) -> bool:
        return self.task in REGION_TASKS


@dataclass(frozen=True)
class FollowUp:
    """region2text asked about each box the plan's detection prompts found."""

    prompt: Prompt
    slots: Mapping[str, Any]
    max_boxes: int
    layout: str

    def planned(self, box: tuple[int, int, int, int], window: str | None) -> PlannedPrompt:
        """The region-description question about one detected box (0-999 coordinates)."""
        question = self.prompt.render(self.layout, box=list(box), **dict(self.slots))
        return PlannedPrompt(task=self.prompt.task, language=self.prompt.language, question=question,
                             prompt_id=self.prompt.id, training_set=self.prompt.training_set, window=window)


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    modalities: frozenset[str]
    body_parts: frozenset[str]
    views: frozenset[str]
    prompts: tuple[PlannedPrompt, ...]
    follow_up: FollowUp | None = None

    @property
    def languages(self) -> tuple[str, ...]:
        """The languages the plan's tasks were trained in (each prompt is asked in its own)."""
        return tuple(sorted({p.language for p in self.prompts}))

    def matches(self, modality: str | None, body_part: str | None, view: str | None = None) -> bool:
        mod = (modality or "").strip().upper()
        part = (body_part or "").strip().upper()
        mod_ok = "*" in self.modalities or mod in self.modalities
        part_ok = not self.body_parts or "*" in self.body_parts or part in self.body_parts
        view_ok = not self.views or view is None or view in self.views
        return mod_ok and part_ok and view_ok


def _planned(plan: str, n: int, entry: Any, layout: str) -> PlannedPrompt:
    where = f"plan {plan}: prompt {n}"
    if not isinstance(entry, Mapping) or "prompt" not in entry:
        raise PlanError(f"{where} needs {{ prompt = \"...\", slots = {{...}} }}")
    library = prompt_library()
    pid = entry["prompt"]
    if pid not in library:
        raise PlanError(f"{where}: unknown prompt {pid!r}")
    prompt = library[pid]
    if prompt.task == "region_to_text":
        raise PlanError(f"{where}: {pid} needs a box; ask it as the plan's follow_up")
    unknown = set(entry) - {"prompt", "slots", "window"}
    if unknown:
        raise PlanError(f"{where}: unknown keys {sorted(unknown)}")
    window = entry.get("window")
    if window is not None and window not in CT_PRESETS:
        raise PlanError(f"{where}: window {window!r} is not one of {sorted(CT_PRESETS)}")
    try:
        question = prompt.render(layout, **dict(entry.get("slots") or {}))
    except PromptError as exc:
        raise PlanError(f"{where}: {exc}") from None
    return PlannedPrompt(task=prompt.task, language=prompt.language, question=question, prompt_id=pid,
                         training_set=prompt.training_set, options=prompt.options, window=window,
                         slots=dict(entry.get("slots") or {}))


def _follow_up(plan: str, entry: Any, layout: str) -> FollowUp | None:
    if entry is None:
        return None
    pid = entry.get("prompt") if isinstance(entry, Mapping) else None
    prompt = prompt_library().get(pid or "")
    if prompt is None or prompt.task != "region_to_text":
        raise PlanError(f"plan {plan}: follow_up needs a region_to_text prompt, not {pid!r}")
    slots = dict(entry.get("slots") or {})
    try:
        prompt.render(layout, box=[0, 0, 999, 999], **slots)
    except PromptError as exc:
        raise PlanError(f"plan {plan}: follow_up: {exc}") from None
    max_boxes = entry.get("max_boxes", 8)
    if not isinstance(max_boxes, int) or max_boxes < 1:
        raise PlanError(f"plan {plan}: follow_up.max_boxes must be a positive integer")
    return FollowUp(prompt=prompt, slots=slots, max_boxes=max_boxes, layout=layout)


def _parse(data: Mapping[str, Any], source: str, layout: str) -> tuple[Plan, ...]:
    raw = data.get("plans")
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{source}: no [[plans]]")
    plans: list[Plan] = []
    for i, p in enumerate(raw):
        name = str(p.get("name") or f"#{i + 1}")
        entries = p.get("prompts")
        if not isinstance(entries, list) or not entries:
            raise PlanError(f"{source}: plan {name}: prompts is empty")
        prompts = tuple(_planned(name, n, e, layout) for n, e in enumerate(entries, start=1))
        follow_up = _follow_up(name, p.get("follow_up"), layout)
        if follow_up is not None and not any(q.task == "detection" for q in prompts):
            raise PlanError(f"{source}: plan {name}: follow_up without a detection prompt")
        modalities = frozenset(str(m).strip().upper() for m in p.get("modalities") or [])
        if not modalities:
            raise PlanError(f"{source}: plan {name}: modalities is empty (use [\"*\"] for any)")
        views = frozenset(str(v).strip().lower() for v in p.get("views") or [])
        if views - VIEWS:
            raise PlanError(f"{source}: plan {name}: views {sorted(views - VIEWS)} not in {sorted(VIEWS)}")
        plans.append(
            Plan(
                name=name,
                description=str(p.get("description", "")),
                modalities=modalities,
                body_parts=frozenset(str(b).strip().upper() for b in p.get("body_parts") or []),
                views=views,
                prompts=prompts,
                follow_up=follow_up,
            )
        )
    last = plans[-1]
    if "*" not in last.modalities or (last.body_parts and "*" not in last.body_parts) or last.views:
        raise PlanError(f"{source}: the last plan ({last.name}) must match everything (modalities = [\"*\"])")
    return tuple(plans)


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, layout: str) -> tuple[Plan, ...]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"model.plans_path: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"model.plans_path: {path} is not valid TOML: {exc}") from None
    return _parse(data, path, layout)


def load_plans(path: str | Path | None = None, layout: str = "training") -> Sequence[Plan]:
    """The plans of ``path`` (default: the shipped file) rendered in ``layout``; re-read on change."""
    if layout not in LAYOUTS:
        raise PlanError(f"model.prompt_layout: {layout!r} is not one of {LAYOUTS}")
    p = Path(path) if path else PLANS_PATH
    try:
        mtime = p.stat().st_mtime_ns
    except FileNotFoundError:
        raise PlanError(f"model.plans_path: file not found: {p}") from None
    return _load(str(p), mtime, layout)


def select_plan(modality: str | None, body_part: str | None, path: str | Path | None = None,
                view: str | None = None, layout: str = "training") -> Plan:
    """The first plan matching the image (the last plan matches everything)."""
    for plan in load_plans(path, layout):
        if plan.matches(modality, body_part, view):
            return plan
    raise PlanError("no plan matches")  # unreachable: the last plan matches everything


def plan_for(modality: str | None, body_part: str | None, path: str | Path | None = None,
             view: str | None = None, layout: str = "training") -> list[PlannedPrompt]:
    """The prompts for one image of this modality, body part and view."""
    return list(select_plan(modality, body_part, path, view, layout).prompts)
