"""The one interface every model backend implements (medrega, tiny, replay)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

__all__ = ["ModelIdentity", "GenerationRequest", "GeneratedAnswer", "ModelBackend", "EngineBackend", "ModelLoadError"]


#: ``progress(done, total)``: answers done so far of a generate call.
Progress = Callable[[int, int], None]


class ModelLoadError(RuntimeError):
    """A backend could not be loaded (missing checkpoint files, bad replay file, ...)."""


@dataclass(frozen=True)
class ModelIdentity:
    """What produced an answer. Written into every model run, finding and SR.

    ``name`` never says "MedRegA" for a test model: the tiny backend is
    ``"tiny-random-internvl (test model, not MedRegA)"`` and replay is
    ``"replay (recorded answers, not a live model)"``.
    """

    backend: str  # "medrega" | "tiny" | "replay"
    name: str
    version: str
    #: Identity of the weights: a digest over the checkpoint's files (or the replay file).
    weights_id: str
    manufacturer: str = "medrega-gateway"

    @property
    def is_test_model(self) -> bool:
        return self.backend != "medrega"


@dataclass(frozen=True)
class GenerationRequest:
    """One question about one image, worded as MedRegA was trained (``<image>`` placeholder).

    Requests about the same image hold the same :class:`~PIL.Image.Image` object: an engine
    backend encodes that object once for all of them.
    """

    image: "Image.Image"  # RGB; the backend resizes to its input size
    question: str
    language: str  # "en" | "zh"
    sop_instance_uid: str = ""
    frame_number: int | None = None


@dataclass(frozen=True)
class GeneratedAnswer:
    """One raw answer and whether generation finished."""

    text: str
    #: Generation reached max_new_tokens without ``<|im_end|>``: the answer was cut off.
    truncated: bool = False


class ModelBackend(abc.ABC):
    """Answers :class:`GenerationRequest` batches with the model's raw text."""

    identity: ModelIdentity

    @abc.abstractmethod
    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Return one raw answer per request, special tokens (``<ref>``, ``<box>``) kept."""

    def generate_answers(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> list[GeneratedAnswer]:
        """:meth:`generate` with each answer's truncation (backends that can tell override it).

        ``progress(done, total)`` is called as answers are done (after each batch of an engine
        backend), so that a long study keeps the worker's heartbeat going.
        """
        answers = [GeneratedAnswer(text) for text in self.generate(requests)]
        if progress is not None:
            progress(len(answers), len(answers))
        return answers


class EngineBackend(ModelBackend):
    """A backend that runs an InternVL engine (``medrega`` and ``tiny``): batches of requests."""

    engine: Any  # model.backends.engine.InternVLEngine (imported lazily: it needs torch)
    batch_size: int

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        return [answer.text for answer in self.generate_answers(requests)]

    def generate_answers(
        self, requests: Sequence[GenerationRequest], progress: Progress | None = None
    ) -> list[GeneratedAnswer]:
        """Greedy answers of all ``requests`` in one schedule: each image (the same object)
        through the vision tower once, then the prompts ordered by length in batches of
        :attr:`batch_size`. An answer without ``<|im_end|>`` in its new ids was cut at
        max_new_tokens."""
        all_ids = self.engine.generate_ids(
            [r.question for r in requests], [r.image for r in requests], batch_size=self.batch_size,
            progress=progress,
        )
        return [
            GeneratedAnswer(self.engine.decode_answer(ids), truncated=self.engine.eos_token_id not in ids)
            for ids in all_ids
        ]
