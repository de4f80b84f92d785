"""Model backends behind :class:`model.backends.base.ModelBackend`; see :func:`load_backend`.

Nothing here imports torch or transformers: a backend's module is imported when it is loaded.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from .base import GenerationRequest, ModelBackend, ModelIdentity, ModelLoadError

if TYPE_CHECKING:  # pragma: no cover
    from common.settings import ModelSettings

__all__ = ["GenerationRequest", "ModelBackend", "ModelIdentity", "ModelLoadError", "load_backend", "clear_cache"]

_cache: dict[tuple, ModelBackend] = {}
_lock = threading.Lock()


def _key(settings: "ModelSettings") -> tuple:
    return (
        settings.backend,
        settings.path,
        settings.device,
        settings.dtype,
        settings.load_in_8bit,
        settings.max_new_tokens,
        settings.batch_size,
        settings.tiny_seed,
    )


def load_backend(settings: "ModelSettings") -> ModelBackend:
    """The backend ``settings.backend`` names, loaded once per process and then reused.

    Raises :class:`ModelLoadError` (saying what is missing and how to get it) when it cannot load.
    """
    key = _key(settings)
    with _lock:
        backend = _cache.get(key)
        if backend is None:
            if settings.backend == "medrega":
                from .medrega import MedRegABackend

                backend = MedRegABackend.from_settings(settings)
            elif settings.backend == "tiny":
                from .tiny import TinyBackend

                backend = TinyBackend.from_settings(settings)
            elif settings.backend == "replay":
                from .replay import ReplayBackend

                backend = ReplayBackend.from_settings(settings)
            else:  # pragma: no cover - settings validation forbids it
                raise ModelLoadError(f"unknown model backend {settings.backend!r}")
            _cache[key] = backend
        return backend


def clear_cache() -> None:
    """Forget loaded backends (tests; a worker keeps its model for its whole life)."""
    with _lock:
        _cache.clear()
