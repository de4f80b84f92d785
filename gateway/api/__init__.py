"""The gateway's HTTP API and web pages (FastAPI): see :func:`gateway.api.app.create_app`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from common.audit import AuditSender
    from common.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings, *, audit_sender: AuditSender | None = None) -> FastAPI:
    """Lazy alias of :func:`gateway.api.app.create_app` (keeps ``import gateway.api`` light)."""
    from .app import create_app as _create_app

    return _create_app(settings, audit_sender=audit_sender)
