"""MedRegA's task prompts (English and Chinese), read from ``model/prompts.toml``.

Every instruction is MedRegA's training instruction, verbatim: English ones are read from the
training mixture (:mod:`model.training`), the Chinese ones are the demo's wording (the mixture
lists no Chinese set). A plan only fills the question's slots. How instruction, ``<image>`` and
question are joined is the prompt layout (settings ``model.prompt_layout``, :data:`LAYOUTS`).
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

from .training import TrainingSetError, training_set

__all__ = [
    "PROMPTS_PATH",
    "TASKS",
    "REGION_TASKS",
    "LANGUAGES",
    "LAYOUTS",
    "Prompt",
    "PromptError",
    "prompt_library",
    "render",
]

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
#: "training": '<image>\n' + instruction + ' ' + question (MedRegA's training code);
#: "demo": instruction + ' <image>\n' + question (MedRegA's demo file).
LAYOUTS = ("training", "demo")
_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_LIST_SLOTS = frozenset({"structures", "diseases"})


class PromptError(ValueError):
    """A prompt is unknown, a slot is missing or has the wrong kind of value."""


def _demo_joiner(instruction: str) -> str:
    """The demo writes no space before ``<image>`` after a newline or a Chinese full stop."""
    return "" if instruction.endswith(("\n", "。")) else " "


@dataclass(frozen=True)
class Prompt:
    """One prompt of the library: a trained instruction and a question template."""

    id: str
    task: str
    language: str
    instruction: str
    question: str
    #: The training set whose base_prompt is the instruction; None for the demo's Chinese wording.
    training_set: str | None = None
    #: Where an instruction not in the mixture comes from ("demo line 5").
    instruction_source: str = ""
    separator: str = ", "
    references: tuple[Mapping[str, Any], ...] = field(default=(), compare=False)

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(name for _, name, _, _ in string.Formatter().parse(self.question) if name)

    @property
    def options(self) -> tuple[str, ...]:
        """The trained options of a classification prompt (empty otherwise)."""
        return training_set(self.training_set).options if self.training_set else ()

    @property
    def template(self) -> str:
        """Instruction and question in the demo layout, slots unfilled (tokenizer corpora)."""
        return self.instruction + _demo_joiner(self.instruction) + "<image>\n" + self.question

    def render(self, layout: str = "training", **slots: Any) -> str:
        """The first user turn with every ``{slot}`` of the question filled, in ``layout``."""
        if layout not in LAYOUTS:
            raise PromptError(f"prompt layout {layout!r} is not one of {LAYOUTS}")
        missing = self.slots - slots.keys()
        extra = slots.keys() - self.slots
        if missing or extra:
            raise PromptError(
                f"prompt {self.id}: slots missing {sorted(missing)}, not in the question {sorted(extra)}"
            )
        question = self.question.format_map({k: self._slot(k, v) for k, v in slots.items()})
        if layout == "training":
            return "<image>\n" + self.instruction + " " + question
        return self.instruction + _demo_joiner(self.instruction) + "<image>\n" + question

    def _slot(self, name: str, value: Any) -> str:
        if name in _LIST_SLOTS:
            if isinstance(value, str) or not value:
                raise PromptError(f"prompt {self.id}: {name} must be a non-empty list of names")
            return self.separator.join(f"<ref>{s}</ref>" for s in value)
        if name == "box":
            if len(value) != 4 or not all(isinstance(v, int) and 0 <= v <= 999 for v in value):
                raise PromptError(f"prompt {self.id}: box must be four integers 0-999")
            return "[[" + ", ".join(str(v) for v in value) + "]]"
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
        set_name, instruction = entry.get("training_set"), entry.get("instruction")
        if (set_name is None) == (instruction is None):
            raise PromptError(f"{source}: prompt {pid}: give exactly one of training_set and instruction")
        if set_name is not None:
            try:
                instruction = training_set(set_name).base_prompt
            except TrainingSetError as exc:
                raise PromptError(f"{source}: prompt {pid}: {exc.args[0]}") from None
        elif not entry.get("instruction_source"):
            raise PromptError(f"{source}: prompt {pid}: an instruction outside the mixture needs instruction_source")
        question = entry.get("question")
        if not isinstance(question, str) or "<image>" in question or "<image>" in instruction:
            raise PromptError(f"{source}: prompt {pid}: question must be text without <image> (the layout places it)")
        prompts[pid] = Prompt(
            id=pid,
            task=task,
            language=language,
            instruction=instruction,
            question=question,
            training_set=set_name,
            instruction_source=str(entry.get("instruction_source", "")),
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


def render(prompt_id: str, slots: Mapping[str, Any] | None = None, layout: str = "training") -> str:
    """Render one prompt of the library by id."""
    try:
        prompt = prompt_library()[prompt_id]
    except KeyError:
        raise PromptError(f"unknown prompt {prompt_id!r}; known: {sorted(prompt_library())}") from None
    return prompt.render(layout, **dict(slots or {}))
