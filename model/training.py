"""MedRegA's training mixture: the task instruction of every training set, verbatim.

``model/training_tasks.json`` is the project's copy of ``training-tasks.json`` of the public
MedRegA reference (``src/shell/meta_file.json`` of xmed-lab/MedRegA, commit dfdb0dbb): one entry
per training set with its sample count and ``base_prompt``, the instruction the model saw in
front of every question of that set. The training code built the first user turn as
``'<image>\\n' + base_prompt + ' ' + question`` (``internvl_chat_finetune.py`` lines 274-285).

A classification set lists its options inside the instruction; :func:`options` reads them back
from the text (one per line after "The possible ... are:", or "are A and B." for MURA), so the
option lists the gateway maps answers to are the trained ones, character for character.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["TRAINING_TASKS_PATH", "TrainingSet", "TrainingSetError", "training_sets", "training_set"]

TRAINING_TASKS_PATH = Path(__file__).with_name("training_tasks.json")

_LIST = re.compile(r"The possible (?:diagnoses|organs|tissues) are:\n(?P<items>(?:[^\n]*\n?)*)")
_PAIR = re.compile(r"The possible (?:diagnoses|organs|tissues) are (?P<a>[^.\n]+?) and (?P<b>[^.\n]+?)\.")
#: The sentences some instructions add after the list to explain an option ("No finding" means ...).
_EXPLANATION = re.compile(r'^"[^"]+" means ')


class TrainingSetError(KeyError):
    """A plan or prompt names a training set the mixture does not have."""


@dataclass(frozen=True)
class TrainingSet:
    """One training set of MedRegA's fine-tuning mixture."""

    name: str
    samples: int
    base_prompt: str

    @property
    def options(self) -> tuple[str, ...]:
        """The options a classification instruction lists (empty for other tasks)."""
        match = _LIST.search(self.base_prompt)
        if match:
            items = [line.strip() for line in match.group("items").split("\n")]
            return tuple(i for i in items if i and not _EXPLANATION.match(i))
        pair = _PAIR.search(self.base_prompt)
        if pair:
            return (pair.group("a").strip(), pair.group("b").strip())
        return ()


@lru_cache(maxsize=1)
def training_sets() -> dict[str, TrainingSet]:
    """Every training set of the mixture, by name."""
    data = json.loads(TRAINING_TASKS_PATH.read_text(encoding="utf-8"))
    return {
        name: TrainingSet(name=name, samples=int(entry["samples"]), base_prompt=str(entry["base_prompt"]))
        for name, entry in data.items()
    }


def training_set(name: str) -> TrainingSet:
    """The training set ``name``; :class:`TrainingSetError` when the mixture has none."""
    try:
        return training_sets()[name]
    except KeyError:
        raise TrainingSetError(f"{name!r} is not a training set of MedRegA's mixture (model/training_tasks.json)") from None
