"""The HTTP application: auditors' API, administrators' API, and the web pages under ``/ui``.

``create_app(settings)`` refuses to build an application on a database whose schema is not at the
head revision (:class:`common.db.SchemaNotCurrentError`): run ``medrega-gateway db upgrade``.

Audit messages are also sent to a syslog collector (DICOM PS3.15 A.5 over UDP) when the settings
name one (``api.audit_syslog_host``), or when an ``audit_sender`` is passed in.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.audit import AuditSender, install_sender, sender_from_settings
from common.db import check_schema_current, make_engine
from common.settings import Settings
from . import routes_admin, routes_evaluations, routes_findings, ui
from .pagination import InvalidCursorError
from .throttle import AuthFailureLimiter

__all__ = ["create_app", "API_VERSION"]

API_VERSION = "1.0.0"
_STATIC = Path(__file__).resolve().parent / "static"


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path) and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def create_app(settings: Settings, *, audit_sender: AuditSender | None = None) -> FastAPI:
    """Build the application for ``settings`` (checks the schema first)."""
    url = settings.database_url
    check_schema_current(url)

    app = FastAPI(
        title="medrega-gateway",
        version=API_VERSION,
        description=(
            "Findings of the MedRegA model on studies received from PACS, for auditors (read) "
            "and administrators (configuration, retries). Every read of findings or studies is "
            "recorded in the audit log. Authenticate with `Authorization: Bearer <token>`."
        ),
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    factory: sessionmaker[Session] = sessionmaker(make_engine(url), expire_on_commit=False)
    app.state.sessions = factory
    app.state.auth_failures = AuthFailureLimiter(
        settings.api.auth_failures_allowed, settings.api.auth_failure_delay_s,
        settings.api.auth_failure_max_delay_s)
    sender = audit_sender or sender_from_settings(settings)
    if sender is not None:
        install_sender(factory, sender)

    app.include_router(routes_findings.router)
    app.include_router(routes_evaluations.router)
    app.include_router(routes_admin.router)
    app.include_router(ui.router)
    app.mount("/ui/static", StaticFiles(directory=_STATIC), name="static")
    ui.install_handlers(app)

    @app.exception_handler(InvalidCursorError)
    async def _bad_cursor(_request: Request, exc: InvalidCursorError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the first route of the path; RFC 9110 wants all its methods.
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(app, request))}
        return await http_exception_handler(request, exc)

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.url.path.startswith("/ui"):
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self'; style-src 'self'; form-action 'self'; "
                "frame-ancestors 'none'",
            )
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
