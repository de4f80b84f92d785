"""The gateway's HTTP API and web pages (FastAPI): see :func:`gateway.api.app.create_app`."""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):  # type: ignore[no-untyped-def]
    """Lazy alias of :func:`gateway.api.app.create_app` (keeps ``import gateway.api`` light)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
