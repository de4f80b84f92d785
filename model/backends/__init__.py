"""Model backends behind :class:`model.backends.base.ModelBackend`; see :func:`load_backend`."""

from .base import GenerationRequest, ModelBackend, ModelIdentity, ModelLoadError

__all__ = ["GenerationRequest", "ModelBackend", "ModelIdentity", "ModelLoadError"]
