"""Server-rendered web pages under ``/ui`` (Jinja2), with the same tokens and roles as the API.

Logging in with a token sets an HttpOnly, SameSite=Strict cookie holding it (path ``/ui``), so a
revoked token stops working on its next request. Forms that change anything carry a CSRF value
derived from the token (HMAC), checked on every POST. Reads are audited exactly like the API's.

Every refusal of a page (401, 403, 404, 422, 429, 500) is answered with the styled error page
(:func:`error_page`), never with the API's JSON; a query parameter a page does not know, or a
filter value it cannot take (``language=fr``), is a 422 as on the API.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from common.models import as_utc
from common.uids import valid_uid
from model.prompts import LANGUAGES
from .auditing import audit_request, audit_search, query_text
from .auth import (
    Principal,
    get_session,
    get_settings,
    principal_for_token,
    record_auth_failure,
    record_forbidden,
    refuse_if_throttled,
)
from .export import EXPORT_FORMATS, stream_export
from .pagination import InvalidCursorError
from .query_findings import EXPORT_COLUMNS, FindingFilters, iter_findings, search_findings
from .query_studies import StudyNotFoundError, get_study, study_detail
from .regions import pair_regions
from .routes_findings import annotated_image

__all__ = ["router", "templates", "install_handlers", "COOKIE_NAME", "csrf_value", "ui_principal",
           "ui_admin", "check_csrf", "page", "error_page", "page_params", "FilterError",
           "text_filter", "when_filter", "next_page_url", "filter_params", "PAGE_SIZE"]

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))

COOKIE_NAME = "medrega_session"
SESSION_MAX_AGE_S = 8 * 3600
PAGE_SIZE = 50
_TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f]{0,256}$")
_Choice = TypeVar("_Choice", bound=str)  # a Literal of allowed values keeps its type

#: Titles of the error page by status code.
ERROR_TITLES = {
    400: "Bad request", 401: "Not signed in", 403: "Not allowed", 404: "Not found",
    405: "Method not allowed", 409: "Conflict", 422: "Invalid request",
    429: "Too many attempts", 500: "Server error", 503: "Unavailable",
}


class LoginRequired(Exception):
    """No valid session cookie: send the browser to the login form."""


class FilterError(ValueError):
    """A filter value a page cannot take (answered 422 with the page and the message)."""


def csrf_value(token: str) -> str:
    """The CSRF form value bound to this session's token."""
    return hmac.new(token.encode(), b"medrega-ui-csrf", hashlib.sha256).hexdigest()


def ui_principal(request: Request, session: Session = Depends(get_session)) -> Principal:
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        raise LoginRequired()
    refuse_if_throttled(request)
    principal = principal_for_token(session, get_settings(request), token)
    if principal is None:
        record_auth_failure(session, request, "invalid or revoked token (web session)")
        raise LoginRequired()
    request.state.principal = principal  # the error page shows the navigation of this caller
    return principal


def ui_admin(request: Request, principal: Principal = Depends(ui_principal),
             session: Session = Depends(get_session)) -> Principal:
    """Only admins; a refused page or form is recorded (``auth.forbidden``) as the API does."""
    if not principal.is_admin:
        record_forbidden(session, request, principal)
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "this page needs an administrator's token; you are signed in as an "
                            "auditor")
    return principal


def check_csrf(request: Request, csrf: str) -> None:
    token = request.cookies.get(COOKIE_NAME, "")
    if not token or not hmac.compare_digest(csrf, csrf_value(token)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form has expired: reload the page")


def page(request: Request, template: str, principal: Principal | None, code: int = 200,
         **context: Any) -> HTMLResponse:
    token = request.cookies.get(COOKIE_NAME, "")
    context.update(principal=principal, csrf=csrf_value(token) if token else "")
    return templates.TemplateResponse(request, template, context, status_code=code)


def error_page(request: Request, code: int, message: str,
               headers: dict[str, str] | None = None) -> HTMLResponse:
    """The styled error page for a refused page or form (any status code)."""
    principal = getattr(request.state, "principal", None)
    response = page(request, "error.html", principal, code=code,
                    title=ERROR_TITLES.get(code, f"Error {code}"), status_code=code,
                    message=message)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def is_page(request: Request) -> bool:
    """Is this request for a web page (answered in HTML) rather than the API or an image?"""
    path = request.url.path
    return (path == "/ui" or path.startswith("/ui/")) and not path.startswith("/ui/static/") \
        and not path.endswith(".png")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
    return "; ".join(parts) or "the request is not valid"


def install_handlers(app: FastAPI) -> None:
    """Redirect to the login form when a page needs a session; HTML errors under /ui."""

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, _exc: LoginRequired) -> Response:
        if request.url.path.endswith(".png"):
            return Response(status_code=status.HTTP_401_UNAUTHORIZED)
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = RedirectResponse(f"/ui/login?{urlencode({'next': target})}",
                                    status_code=status.HTTP_303_SEE_OTHER)
        response.delete_cookie(COOKIE_NAME, path="/ui")
        return response


def html_http_error(request: Request, code: int, detail: Any,
                    headers: dict[str, str] | None) -> HTMLResponse:
    message = detail if isinstance(detail, str) else "the request was refused"
    if code == 404 and message == "Not Found":
        message = f"there is no page {request.url.path}"
    return error_page(request, code, message, headers)


def html_validation_error(request: Request, exc: RequestValidationError) -> HTMLResponse:
    return error_page(request, 422, _validation_message(exc))


def html_server_error(request: Request) -> HTMLResponse:
    return error_page(request, status.HTTP_500_INTERNAL_SERVER_ERROR,
                      "the server failed to answer this page; the error is in the server's log")


# -- query parameters of pages -------------------------------------------------------------------

def page_params(request: Request, allowed: Iterable[str]) -> dict[str, str]:
    """The query parameters of a page; one it does not know is a 422 (as on the API)."""
    known = set(allowed)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise HTTPException(422,
                            f"unknown query parameter(s): {', '.join(unknown)}")
    return {k: v for k, v in request.query_params.items()}


def text_filter(params: dict[str, str], key: str, max_length: int = 64) -> str | None:
    value = (params.get(key) or "").strip()
    if not value:
        return None
    if len(value) > max_length or not _TEXT_RE.match(value):
        raise FilterError(f"{key}: at most {max_length} printable characters")
    return value


def choice_filter(params: dict[str, str], key: str, choices: Iterable[_Choice]) -> _Choice | None:
    """The one of ``choices`` that ``params[key]`` names (``None`` when not given)."""
    value = (params.get(key) or "").strip()
    options = tuple(choices)
    if not value:
        return None
    for option in options:
        if value == option:
            return option
    raise FilterError(f"{key}: one of {', '.join(options)} (not {value[:32]!r})")


def when_filter(params: dict[str, str], key: str) -> dt.datetime | None:
    value = (params.get(key) or "").strip()
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{key}: not a date and time (YYYY-MM-DD HH:MM, UTC)") from None
    return as_utc(parsed)


def uid_filter(params: dict[str, str], key: str) -> str | None:
    uid = text_filter(params, key)
    if uid is not None and not valid_uid(uid):
        raise FilterError(f"{key}: not a UID (PS3.5 9.1)")
    return uid


def cursor_param(params: dict[str, str]) -> str | None:
    cursor = (params.get("cursor") or "").strip()
    if cursor and (len(cursor) > 200 or not re.fullmatch(r"[A-Za-z0-9_-]+", cursor)):
        raise FilterError("cursor is not valid: use the page's Next link")
    return cursor or None


def filter_params(params: dict[str, str]) -> dict[str, str]:
    """A page's filters that are set, without its cursor: the first page of the same search."""
    return {k: v for k, v in params.items() if v and k != "cursor"}


def next_page_url(path: str, params: dict[str, str], next_cursor: str | None) -> str | None:
    return (f"{path}?{urlencode({**filter_params(params), 'cursor': next_cursor})}"
            if next_cursor else None)


# -- login --------------------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/studies"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    page_params(request, ("next",))
    return page(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login")
def login(request: Request, token: str = Form(max_length=256), next: str = Form("/ui/studies"),
          session: Session = Depends(get_session)) -> Response:
    refuse_if_throttled(request)
    token = token.strip()
    principal = principal_for_token(session, get_settings(request), token)
    if principal is None:
        record_auth_failure(session, request, "invalid or revoked token (web login)")
        return page(request, "login.html", None, code=401, next=_safe_next(next),
                    error="This token is not valid (unknown or revoked).")
    audit_request(session, principal, "auth.login", query_text(request.url.path))
    session.commit()
    response = RedirectResponse(_safe_next(next), status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(COOKIE_NAME, token, max_age=SESSION_MAX_AGE_S, path="/ui", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE_NAME, path="/ui")
    return response


@router.get("")
@router.get("/")
def home() -> Response:
    return RedirectResponse("/ui/studies", status_code=status.HTTP_303_SEE_OTHER)


# -- findings -----------------------------------------------------------------------------------

FINDING_FILTER_KEYS = ("created_from", "created_to", "modality", "calling_ae_title", "label",
                       "language", "model_name", "weights_id", "delivery_status",
                       "study_instance_uid")


def _filters(params: dict[str, str]) -> FindingFilters:
    return FindingFilters(
        created_from=when_filter(params, "created_from"),
        created_to=when_filter(params, "created_to"),
        modality=text_filter(params, "modality", 16),
        calling_ae_title=text_filter(params, "calling_ae_title", 16),
        label=text_filter(params, "label", 256),
        language=choice_filter(params, "language", LANGUAGES),
        model_name=text_filter(params, "model_name", 128),
        weights_id=text_filter(params, "weights_id", 128),
        delivery_status=choice_filter(params, "delivery_status",
                                      ("sent", "pending", "failed", "none")),
        study_instance_uid=uid_filter(params, "study_instance_uid"),
    )


@router.get("/findings", response_class=HTMLResponse)
def findings_page(request: Request, principal: Principal = Depends(ui_principal),
                  session: Session = Depends(get_session)) -> HTMLResponse:
    params = page_params(request, (*FINDING_FILTER_KEYS, "cursor"))
    try:
        cursor = cursor_param(params)
        filters = _filters(params)
        items, next_cursor = search_findings(session, filters, limit=PAGE_SIZE, cursor=cursor,
                                             show_identifiers=principal.sees_patient_identifiers)
    except (FilterError, InvalidCursorError) as exc:
        return page(request, "findings.html", principal, code=422, params=params, items=[],
                    error=str(exc), next_url=None, export_query="", languages=LANGUAGES)
    audit_search(session, principal, request.url.path, "findings.search", filters.as_query(),
                 limit=PAGE_SIZE, cursor=cursor, rows=len(items),
                 study_instance_uid=filters.study_instance_uid)
    return page(request, "findings.html", principal, params=params, items=items, error=None,
                next_url=next_page_url("/ui/findings", params, next_cursor),
                export_query=urlencode(filter_params(params)), languages=LANGUAGES)


def bom_param(params: dict[str, str]) -> bool:
    """``bom``: true (the default of the pages' links) or false."""
    value = (params.get("bom") or "true").strip().lower()
    if value not in ("true", "false", "1", "0"):
        raise FilterError("bom: true or false")
    return value in ("true", "1")


@router.get("/findings/export")
def findings_export(request: Request,
                    principal: Principal = Depends(ui_principal)) -> StreamingResponse:
    params = page_params(request, (*FINDING_FILTER_KEYS, "format", "bom"))
    try:
        fmt = choice_filter(params, "format", EXPORT_FORMATS) or "csv"
        bom = bom_param(params)
        filters = _filters(params)
    except FilterError as exc:
        raise HTTPException(422, str(exc)) from None
    show = principal.sees_patient_identifiers
    return stream_export(
        request.app.state.sessions, lambda s: iter_findings(s, filters, show_identifiers=show),
        fmt=fmt, columns=EXPORT_COLUMNS, principal=principal,
        action="findings.export",
        query=query_text(request.url.path, filters.as_query(), format=fmt),
        filename_stem="findings", bom=bom,
    )


# -- one study ----------------------------------------------------------------------------------

def _uid(value: str) -> str:
    if not valid_uid(value):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "not a UID")
    return value


@router.get("/studies/{study_instance_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_instance_uid: str,
               principal: Principal = Depends(ui_principal),
               session: Session = Depends(get_session)) -> HTMLResponse:
    notice = page_params(request, ("message", "error"))  # the outcome of a retry or cancel here
    uid = _uid(study_instance_uid)
    try:
        study = get_study(session, uid)
    except StudyNotFoundError as exc:
        audit_request(session, principal, "study.read", query_text(request.url.path), rows=0,
                      outcome="failure", study_instance_uid=uid)
        session.commit()
        return error_page(request, status.HTTP_404_NOT_FOUND, str(exc))
    detail = study_detail(session, study, show_identifiers=principal.sees_patient_identifiers)
    audit_request(session, principal, "study.read", query_text(request.url.path),
                  rows=len(detail.findings), study_instance_uid=uid)
    session.commit()
    images = pair_regions(detail.findings)
    shown = {g.sop_instance_uid for g in images}
    # Images of the study without findings are listed too (nothing drawn on them).
    others = [sop for s in detail.series for sop in s.instance_sop_uids if sop not in shown]
    return page(request, "study.html", principal, detail=detail, images=images,
                other_images=others, message=notice.get("message"), error=notice.get("error"))


@router.get("/studies/{study_instance_uid}/instances/{sop_instance_uid}.png")
def study_image(request: Request, study_instance_uid: str, sop_instance_uid: str,
                frame: int | None = None, principal: Principal = Depends(ui_principal),
                session: Session = Depends(get_session)) -> Response:
    png = annotated_image(session, request, principal, _uid(study_instance_uid),
                          _uid(sop_instance_uid), frame)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})
