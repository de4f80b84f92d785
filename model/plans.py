"""Task plans: which prompts each image gets, by Modality and Body Part Examined.

Plans are data (``model/plans.toml``, or the file ``settings.model.plans_path`` names), validated
when loaded: every plan has, for each language, one report prompt and one region prompt, every
prompt id exists in the library (:mod:`model.prompts`) and every slot renders. See the data file
for the matching rules.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .prompts import LANGUAGES, REGION_TASKS, PromptError, prompt_library

__all__ = ["PLANS_PATH", "PlanError", "PlannedPrompt", "Plan", "load_plans", "plan_for"]

PLANS_PATH = Path(__file__).with_name("plans.toml")


class PlanError(ValueError):
    """The plans file is missing, malformed or incomplete; the message names the plan."""


@dataclass(frozen=True)
class PlannedPrompt:
    """One question to ask about one image."""

    task: str
    language: str
    question: str
    prompt_id: str = ""

    @property
    def is_region(self) -> bool:
        return self.task in REGION_TASKS


@dataclass(frozen=True)
class Plan:
    name: str
    description: str
    modalities: frozenset[str]
    body_parts: frozenset[str]
    prompts: tuple[PlannedPrompt, ...]

    def matches(self, modality: str | None, body_part: str | None) -> bool:
        mod = (modality or "").strip().upper()
        part = (body_part or "").strip().upper()
        mod_ok = "*" in self.modalities or mod in self.modalities
        part_ok = not self.body_parts or "*" in self.body_parts or part in self.body_parts
        return mod_ok and part_ok


def _planned(plan: str, role: str, language: str, entry: Any) -> PlannedPrompt:
    if not isinstance(entry, Mapping) or "prompt" not in entry:
        raise PlanError(f"plan {plan}: {language}.{role} needs {{ prompt = \"...\", slots = {{...}} }}")
    library = prompt_library()
    pid = entry["prompt"]
    if pid not in library:
        raise PlanError(f"plan {plan}: {language}.{role}: unknown prompt {pid!r}")
    prompt = library[pid]
    if prompt.language != language:
        raise PlanError(f"plan {plan}: {language}.{role}: prompt {pid} is in {prompt.language!r}")
    if role == "report" and prompt.task != "report":
        raise PlanError(f"plan {plan}: {language}.report: prompt {pid} is a {prompt.task} prompt")
    if role == "region" and prompt.task not in REGION_TASKS:
        raise PlanError(f"plan {plan}: {language}.region: prompt {pid} is a {prompt.task} prompt")
    try:
        question = prompt.render(**dict(entry.get("slots") or {}))
    except PromptError as exc:
        raise PlanError(f"plan {plan}: {language}.{role}: {exc}") from None
    return PlannedPrompt(task=prompt.task, language=language, question=question, prompt_id=pid)


def _parse(data: Mapping[str, Any], source: str) -> tuple[Plan, ...]:
    raw = data.get("plans")
    if not isinstance(raw, list) or not raw:
        raise PlanError(f"{source}: no [[plans]]")
    plans: list[Plan] = []
    for i, p in enumerate(raw):
        name = str(p.get("name") or f"#{i + 1}")
        prompts: list[PlannedPrompt] = []
        for language in LANGUAGES:
            section = p.get(language)
            if not isinstance(section, Mapping):
                raise PlanError(f"{source}: plan {name}: no [{language}] section")
            for role in ("report", "region"):
                if role not in section:
                    raise PlanError(f"{source}: plan {name}: {language} has no {role} prompt")
                prompts.append(_planned(name, role, language, section[role]))
        for extra in p.get("extra") or []:
            language = extra.get("language") if isinstance(extra, Mapping) else None
            if language not in LANGUAGES:
                raise PlanError(f"{source}: plan {name}: extra prompt needs language en or zh")
            prompts.append(_planned(name, "extra", language, extra))
        modalities = frozenset(str(m).strip().upper() for m in p.get("modalities") or [])
        if not modalities:
            raise PlanError(f"{source}: plan {name}: modalities is empty (use [\"*\"] for any)")
        plans.append(
            Plan(
                name=name,
                description=str(p.get("description", "")),
                modalities=modalities,
                body_parts=frozenset(str(b).strip().upper() for b in p.get("body_parts") or []),
                prompts=tuple(prompts),
            )
        )
    last = plans[-1]
    if "*" not in last.modalities or (last.body_parts and "*" not in last.body_parts):
        raise PlanError(f"{source}: the last plan ({last.name}) must match everything (modalities = [\"*\"])")
    return tuple(plans)


@lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int) -> tuple[Plan, ...]:
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"model.plans_path: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"model.plans_path: {path} is not valid TOML: {exc}") from None
    return _parse(data, path)


def load_plans(path: str | Path | None = None) -> Sequence[Plan]:
    """The plans of ``path`` (default: the shipped file); re-read when the file changes."""
    p = Path(path) if path else PLANS_PATH
    try:
        mtime = p.stat().st_mtime_ns
    except FileNotFoundError:
        raise PlanError(f"model.plans_path: file not found: {p}") from None
    return _load(str(p), mtime)


def select_plan(modality: str | None, body_part: str | None, path: str | Path | None = None) -> Plan:
    for plan in load_plans(path):
        if plan.matches(modality, body_part):
            return plan
    raise PlanError("no plan matches")  # unreachable: the last plan matches everything


def plan_for(modality: str | None, body_part: str | None, path: str | Path | None = None) -> list[PlannedPrompt]:
    """The prompts for one image of this modality and body part."""
    return list(select_plan(modality, body_part, path).prompts)
