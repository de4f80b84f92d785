"""The HTTP application: auditors' API, administrators' API, and the web pages under ``/ui``.

``create_app(settings)`` refuses to build an application on a database whose schema is not at the
head revision (:class:`common.db.SchemaNotCurrentError`): run ``medrega-gateway db upgrade``.

``/`` leads to the web pages (``/ui``); ``/docs`` is Swagger UI served from the files of the
``swagger-ui-bundle-v2`` package, so the page works in a network without internet (no page of the
application names another host).

Audit messages are also sent to a syslog collector (DICOM PS3.15 A.5 over UDP) when the settings
name one (``api.audit_syslog_host``), or when an ``audit_sender`` is passed in.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.audit import AuditSender, install_sender, sender_from_settings
from common.db import check_schema_current, make_engine
from common.settings import Settings
from . import routes_admin, routes_evaluations, routes_findings, ui, ui_admin, ui_pages
from .pagination import InvalidCursorError
from .throttle import AuthFailureLimiter

__all__ = ["create_app", "API_VERSION", "DOCS_ASSETS"]

API_VERSION = "1.0.0"
_STATIC = Path(__file__).resolve().parent / "static"
#: Where ``/docs`` takes Swagger UI's script and style from (files shipped with the package).
DOCS_ASSETS = "/docs/assets"


def _swagger_ui_folder() -> Path | None:
    try:
        # optional package (the /docs assets), untyped; absent where it is not installed
        from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        return None
    return Path(str(swagger_ui_path))


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        regex = getattr(route, "path_regex", None)
        route_methods = getattr(route, "methods", None)  # Mount and WebSocketRoute have none
        if regex is not None and regex.match(request.url.path) and route_methods:
            methods |= set(route_methods)
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
        docs_url=None,
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
    app.include_router(ui_pages.router)
    app.include_router(ui_admin.router)
    app.mount("/ui/static", StaticFiles(directory=_STATIC), name="static")
    ui.install_handlers(app)
    _install_docs(app)

    @app.exception_handler(InvalidCursorError)
    async def _bad_cursor(_request: Request, exc: InvalidCursorError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the first route of the path; RFC 9110 wants all its methods.
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(app, request))}
        if ui.is_page(request):
            return ui.html_http_error(request, exc.status_code, exc.detail, dict(exc.headers or {}))
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if ui.is_page(request):
            return ui.html_validation_error(request, exc)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, _exc: Exception) -> Response:
        # Starlette logs the exception and re-raises it after sending this answer.
        if ui.is_page(request):
            return ui.html_server_error(request)
        return JSONResponse({"detail": "Internal Server Error"}, status_code=500)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=303)

    @app.middleware("http")
    async def _security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
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


def _install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI from the package's own files (``swagger-ui-bundle-v2``), its
    favicon from ``/ui/static``, and no online validator (Swagger UI would fetch a badge from
    validator.swagger.io)."""
    folder = _swagger_ui_folder()
    if folder is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=folder), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if folder is None:
            return HTMLResponse(
                "<!doctype html><title>API documentation</title><p>The API documentation needs "
                "the package swagger-ui-bundle-v2 (requirements.txt): run make setup. The "
                "OpenAPI document is at <a href=\"/openapi.json\">/openapi.json</a>.</p>",
                status_code=503)
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url="/ui/static/favicon.svg",
            swagger_ui_parameters={"validatorUrl": None},
        )
