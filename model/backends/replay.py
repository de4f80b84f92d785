"""The ``replay`` backend: recorded answers from a JSONL file (demos, tests, audits).

``model.path`` names a UTF-8 JSONL file, one JSON object per line::

    {"answer": "<ref>right lung</ref><box>[[102, 106, 481, 910]]</box>: clear.",
     "language": "en", "sop_instance_uid": "1.2.3", "prompt_contains": "grounding"}

``answer`` is required; ``language`` ("en"/"zh"), ``sop_instance_uid``, ``prompt_contains``
(a substring of the question sent) and ``training_set`` (a set of MedRegA's training mixture,
:mod:`model.training`: the question must carry that set's trained instruction) are optional
match keys. ``truncated: true`` replays an answer that was cut at max_new_tokens. The first
line whose given keys all match answers; no match gives an empty answer. Blank lines and lines
starting with ``#`` are skipped. It never claims to be MedRegA.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..training import TrainingSetError, training_set
from .base import GeneratedAnswer, GenerationRequest, ModelBackend, ModelIdentity, ModelLoadError, Progress

if TYPE_CHECKING:  # pragma: no cover
    from common.settings import ModelSettings

__all__ = ["ReplayBackend", "ReplayEntry"]

REPLAY_NAME = "replay (recorded answers, not a live model)"
_KEYS = {"answer", "language", "sop_instance_uid", "prompt_contains", "training_set", "truncated"}
_TEXT_KEYS = {"language", "sop_instance_uid", "prompt_contains", "training_set"}


@dataclass(frozen=True)
class ReplayEntry:
    answer: str
    language: str | None = None
    sop_instance_uid: str | None = None
    prompt_contains: str | None = None
    training_set: str | None = None
    truncated: bool = False

    def matches(self, request: GenerationRequest) -> bool:
        instruction = training_set(self.training_set).base_prompt if self.training_set else None
        return (
            (self.language is None or self.language == request.language)
            and (self.sop_instance_uid is None or self.sop_instance_uid == request.sop_instance_uid)
            and (self.prompt_contains is None or self.prompt_contains in request.question)
            and (instruction is None or instruction in request.question)
        )


class ReplayBackend(ModelBackend):
    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if not str(path) or not p.is_file():
            raise ModelLoadError(f"model.path {str(path)!r}: replay file not found (a JSONL file of answers)")
        data = p.read_bytes()
        self.entries: list[ReplayEntry] = []
        for number, line in enumerate(data.decode("utf-8", errors="strict").splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ModelLoadError(f"{p}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("answer"), str):
                raise ModelLoadError(f"{p}:{number}: needs an \"answer\" string")
            unknown = set(obj) - _KEYS
            if unknown:
                raise ModelLoadError(f"{p}:{number}: unknown keys {sorted(unknown)} (allowed: {sorted(_KEYS)})")
            for key in _TEXT_KEYS:
                if key in obj and not isinstance(obj[key], str):
                    raise ModelLoadError(f"{p}:{number}: {key} must be a string")
            if not isinstance(obj.get("truncated", False), bool):
                raise ModelLoadError(f"{p}:{number}: truncated must be true or false")
            if "training_set" in obj:
                try:
                    training_set(obj["training_set"])
                except TrainingSetError as exc:
                    raise ModelLoadError(f"{p}:{number}: {exc.args[0]}") from None
            if obj.get("language") not in (None, "en", "zh"):
                raise ModelLoadError(f"{p}:{number}: language must be \"en\" or \"zh\"")
            self.entries.append(ReplayEntry(**obj))
        self.identity = ModelIdentity(
            backend="replay",
            name=REPLAY_NAME,
            version="1",
            weights_id="sha256:" + hashlib.sha256(data).hexdigest(),
        )

    @classmethod
    def from_settings(cls, settings: "ModelSettings") -> "ReplayBackend":
        return cls(settings.path)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return [answer.text for answer in self.generate_answers(requests)]

    def generate_answers(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> list[GeneratedAnswer]:
        out = []
        for request in requests:
            entry = next((e for e in self.entries if e.matches(request)), None)
            out.append(GeneratedAnswer(entry.answer, entry.truncated) if entry else GeneratedAnswer(""))
        if progress is not None:
            progress(len(out), len(out))
        return out
