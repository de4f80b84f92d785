"""MedRegA's task prompts (English and Chinese), read from ``model/prompts.toml``.

The wording is MedRegA's training wording; the data file documents how prompts for pictures the
reference does not show are composed (slot values only, never other words).
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["PROMPTS_PATH", "TASKS", "REGION_TASKS", "LANGUAGES", "Prompt", "PromptError", "prompt_library", "render"]

PROMPTS_PATH = Path(__file__).with_name("prompts.toml")
#: Every task a prompt may have. Region tasks produce <ref>/<box> answers.
TASKS = (
    "report",
    "grounded_report",
    "locate_describe",
    "detection",
    "region_to_text",
    "classification",
    "vqa",
)
REGION_TASKS = frozenset({"grounded_report", "locate_describe", "detection"})
LANGUAGES = ("en", "zh")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class PromptError(ValueError):
    """A prompt is unknown, a slot is missing or has the wrong kind of value."""


@dataclass(frozen=True)
class Prompt:
    """One prompt template of the library."""

    id: str
    task: str
    language: str
    template: str
    separator: str = ", "
    references: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(self.template) if name)

    def render(self, **slots: Any) -> str:
        """The question with every ``{slot}`` filled (each slot must be given, none extra)."""
        missing = self.slots - slots.keys()
        extra = slots.keys() - self.slots
        if missing or extra:
            raise PromptError(
                f"prompt {self.id}: slots missing {sorted(missing)}, not in the template {sorted(extra)}"
            )
        return self.template.format_map({k: self._slot(k, v) for k, v in slots.items()})

    def _slot(self, name: str, value: Any) -> str:
        if name == "structures":
            if isinstance(value, str) or not value:
                raise PromptError(f"prompt {self.id}: structures must be a non-empty list of names")
            return self.separator.join(f"<ref>{s}</ref>" for s in value)
        if name == "box":
            if len(value) != 4 or not all(isinstance(v, int) and 0 <= v <= 999 for v in value):
                raise PromptError(f"prompt {self.id}: box must be four integers 0-999")
            return "[[" + ", ".join(str(v) for v in value) + "]]"
        if name == "options":
            if isinstance(value, str) or not value:
                raise PromptError(f"prompt {self.id}: options must be a non-empty list")
            return "\n".join(value)
        if not isinstance(value, str):
            raise PromptError(f"prompt {self.id}: slot {name} must be text")
        return value


def _parse(data: Mapping[str, Any], source: str) -> dict[str, Prompt]:
    prompts: dict[str, Prompt] = {}
    for pid, entry in (data.get("prompts") or {}).items():
        if not _NAME.match(pid):
            raise PromptError(f"{source}: prompt id {pid!r} must be letters, digits or _")
        task, language = entry.get("task"), entry.get("language")
        if task not in TASKS:
            raise PromptError(f"{source}: prompt {pid}: task {task!r} is not one of {TASKS}")
        if language not in LANGUAGES:
            raise PromptError(f"{source}: prompt {pid}: language {language!r} is not one of {LANGUAGES}")
        template = entry.get("template")
        if not isinstance(template, str) or template.count("<image>") != 1:
            raise PromptError(f"{source}: prompt {pid}: template must contain <image> exactly once")
        prompts[pid] = Prompt(
            id=pid,
            task=task,
            language=language,
            template=template,
            separator=entry.get("separator", ", "),
            references=tuple(entry.get("references", ())),
        )
    if not prompts:
        raise PromptError(f"{source}: no [prompts.*] tables")
    return prompts


@lru_cache(maxsize=1)
def prompt_library() -> Mapping[str, Prompt]:
    """The prompts shipped in ``model/prompts.toml``, by id."""
    return _parse(tomllib.loads(PROMPTS_PATH.read_text(encoding="utf-8")), str(PROMPTS_PATH))


def render(prompt_id: str, slots: Mapping[str, Any] | None = None) -> str:
    """Render one prompt of the library by id."""
    try:
        prompt = prompt_library()[prompt_id]
    except KeyError:
        raise PromptError(f"unknown prompt {prompt_id!r}; known: {sorted(prompt_library())}") from None
    return prompt.render(**dict(slots or {}))
