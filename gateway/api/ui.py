"""Server-rendered web pages under ``/ui`` (Jinja2), with the same tokens and roles as the API.

Logging in with a token sets an HttpOnly, SameSite=Strict cookie holding it (path ``/ui``), so a
revoked token stops working on its next request. Forms that change anything carry a CSRF value
derived from the token (HMAC), checked on every POST. Reads are audited exactly like the API's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from .. import admin
from common.models import DeliveryState, JobState, as_utc
from common.uids import valid_uid
from .auditing import audit_request, query_text
from .auth import (
    Principal,
    get_session,
    get_settings,
    principal_for_token,
    record_auth_failure,
    record_forbidden,
    refuse_if_throttled,
)
from .export import stream_export
from .hooks import enqueue_delivery
from .operations import (
    ActionNotAllowedError,
    DeliveryNotFoundError,
    JobNotFoundError,
    cancel_job,
    retry_delivery,
    retry_job,
)
from .pagination import InvalidCursorError
from .query_deliveries import DeliveryFilters, list_deliveries, list_jobs
from .query_findings import EXPORT_COLUMNS, FindingFilters, iter_findings, search_findings
from .query_studies import StudyNotFoundError, get_study, study_detail
from .regions import pair_regions
from .routes_findings import annotated_image

__all__ = ["router", "install_handlers", "COOKIE_NAME", "csrf_value"]

router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))

COOKIE_NAME = "medrega_session"
SESSION_MAX_AGE_S = 8 * 3600
PAGE_SIZE = 50
_TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f]{0,256}$")


class LoginRequired(Exception):
    """No valid session cookie: send the browser to the login form."""


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
    return principal


def ui_admin(request: Request, principal: Principal = Depends(ui_principal),
             session: Session = Depends(get_session)) -> Principal:
    """Only admins; a refused page or form is recorded (``auth.forbidden``) as the API does."""
    if not principal.is_admin:
        record_forbidden(session, request, principal)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this page needs an admin token")
    return principal


def _check_csrf(request: Request, csrf: str) -> None:
    token = request.cookies.get(COOKIE_NAME, "")
    if not token or not hmac.compare_digest(csrf, csrf_value(token)):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the form has expired: reload the page")


def _page(request: Request, name: str, principal: Principal | None, code: int = 200,
          **context: Any) -> HTMLResponse:
    token = request.cookies.get(COOKIE_NAME, "")
    context.update(principal=principal, csrf=csrf_value(token) if token else "")
    return templates.TemplateResponse(request, name, context, status_code=code)


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


# -- login --------------------------------------------------------------------------------------

def _safe_next(target: str | None) -> str:
    if target and target.startswith("/ui/") and not target.startswith("//"):
        return target
    return "/ui/findings"


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _page(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login")
def login(request: Request, token: str = Form(max_length=256), next: str = Form("/ui/findings"),
          session: Session = Depends(get_session)) -> Response:
    refuse_if_throttled(request)
    token = token.strip()
    principal = principal_for_token(session, get_settings(request), token)
    if principal is None:
        record_auth_failure(session, request, "invalid or revoked token (web login)")
        return _page(request, "login.html", None, code=401, next=_safe_next(next),
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
    return RedirectResponse("/ui/findings", status_code=status.HTTP_303_SEE_OTHER)


# -- findings -----------------------------------------------------------------------------------

class _FilterError(ValueError):
    pass


def _text(params: dict[str, str], key: str, max_length: int = 64) -> str | None:
    value = (params.get(key) or "").strip()
    if not value:
        return None
    if len(value) > max_length or not _TEXT_RE.match(value):
        raise _FilterError(f"{key}: at most {max_length} printable characters")
    return value


def _when(params: dict[str, str], key: str) -> dt.datetime | None:
    value = (params.get(key) or "").strip()
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise _FilterError(f"{key}: not a date and time (YYYY-MM-DD HH:MM, UTC)") from None
    return as_utc(parsed)


def _filters(params: dict[str, str]) -> FindingFilters:
    status_value = _text(params, "delivery_status", 16)
    if status_value not in (None, "sent", "pending", "failed", "none"):
        raise _FilterError("delivery_status: one of sent, pending, failed, none")
    uid = _text(params, "study_instance_uid")
    if uid is not None and not valid_uid(uid):
        raise _FilterError("study_instance_uid: not a UID (PS3.5 9.1)")
    return FindingFilters(
        created_from=_when(params, "created_from"), created_to=_when(params, "created_to"),
        modality=_text(params, "modality", 16), calling_ae_title=_text(params, "calling_ae_title", 16),
        label=_text(params, "label", 256), language=_text(params, "language", 8),
        model_name=_text(params, "model_name", 128), weights_id=_text(params, "weights_id", 128),
        delivery_status=status_value, study_instance_uid=uid,
    )


@router.get("/findings", response_class=HTMLResponse)
def findings_page(request: Request, principal: Principal = Depends(ui_principal),
                  session: Session = Depends(get_session)) -> HTMLResponse:
    params = dict(request.query_params)
    cursor = params.pop("cursor", None) or None
    try:
        filters = _filters(params)
        items, next_cursor = search_findings(session, filters, limit=PAGE_SIZE, cursor=cursor,
                                             show_identifiers=principal.sees_patient_identifiers)
    except (_FilterError, InvalidCursorError) as exc:
        return _page(request, "findings.html", principal, code=400, params=params, items=[],
                     error=str(exc), next_url=None, export_query="")
    audit_request(session, principal, "findings.search",
                  query_text(request.url.path, filters.as_query(), limit=PAGE_SIZE,
                             cursor=bool(cursor)), rows=len(items),
                  study_instance_uid=filters.study_instance_uid)
    session.commit()
    clean = {k: v for k, v in params.items() if v}
    next_url = f"/ui/findings?{urlencode({**clean, 'cursor': next_cursor})}" if next_cursor else None
    return _page(request, "findings.html", principal, params=params, items=items, error=None,
                 next_url=next_url, export_query=urlencode(clean))


@router.get("/findings/export")
def findings_export(request: Request, format: str = "csv",
                    principal: Principal = Depends(ui_principal)) -> StreamingResponse:
    if format not in ("csv", "json"):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "format must be csv or json")
    params = {k: v for k, v in request.query_params.items() if k != "format"}
    try:
        filters = _filters(params)
    except _FilterError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    show = principal.sees_patient_identifiers
    return stream_export(
        request.app.state.sessions, lambda s: iter_findings(s, filters, show_identifiers=show),
        fmt=format, columns=EXPORT_COLUMNS, principal=principal,  # type: ignore[arg-type]
        action="findings.export",
        query=query_text(request.url.path, filters.as_query(), format=format),
        filename_stem="findings",
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
    uid = _uid(study_instance_uid)
    try:
        study = get_study(session, uid)
    except StudyNotFoundError as exc:
        audit_request(session, principal, "study.read", query_text(request.url.path), rows=0,
                      outcome="failure", study_instance_uid=uid)
        session.commit()
        return _page(request, "error.html", principal, code=404, message=str(exc))
    detail = study_detail(session, study, show_identifiers=principal.sees_patient_identifiers)
    audit_request(session, principal, "study.read", query_text(request.url.path),
                  rows=len(detail.findings), study_instance_uid=uid)
    session.commit()
    images = pair_regions(detail.findings)
    shown = {g.sop_instance_uid for g in images}
    # Images of the study without findings are listed too (nothing drawn on them).
    others = [sop for s in detail.series for sop in s.instance_sop_uids if sop not in shown]
    return _page(request, "study.html", principal, detail=detail, images=images,
                 other_images=others)


@router.get("/studies/{study_instance_uid}/instances/{sop_instance_uid}.png")
def study_image(request: Request, study_instance_uid: str, sop_instance_uid: str,
                frame: int | None = None, principal: Principal = Depends(ui_principal),
                session: Session = Depends(get_session)) -> Response:
    png = annotated_image(session, request, principal, _uid(study_instance_uid),
                          _uid(sop_instance_uid), frame)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


# -- administration -----------------------------------------------------------------------------

def _admin_redirect(message: str, error: bool = False) -> Response:
    key = "error" if error else "message"
    return RedirectResponse(f"/ui/admin?{urlencode({key: message})}",
                            status_code=status.HTTP_303_SEE_OTHER)


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request, message: str | None = None, error: str | None = None,
               principal: Principal = Depends(ui_admin),
               session: Session = Depends(get_session)) -> HTMLResponse:
    jobs, _ = list_jobs(session, [JobState.FAILED, JobState.DEAD], limit=200, cursor=None)
    failed, _ = list_deliveries(session, DeliveryFilters(state=DeliveryState.FAILED.value),
                                limit=200, cursor=None)
    audit_request(session, principal, "jobs.list",
                  query_text(request.url.path, {"state": ["failed", "dead"],
                                                "delivery_state": "failed"}),
                  rows=len(jobs) + len(failed))
    session.commit()
    return _page(
        request, "admin.html", principal, message=message, error=error,
        calling_aes=admin.list_calling_aes(session), destinations=admin.list_destinations(session),
        routes=admin.list_routes(session), jobs=jobs, deliveries=failed,
    )


def _admin_action(session: Session, principal: Principal, request: Request, action: str,
                  subject: dict[str, Any], fn: Any) -> str | None:
    """Run ``fn()``; record success or refusal; return the refusal message or None."""
    try:
        fn()
    except (admin.AdminError, JobNotFoundError, DeliveryNotFoundError,
            ActionNotAllowedError) as exc:
        session.rollback()
        audit_request(session, principal, action,
                      query_text(request.url.path, method="POST", error=str(exc)),
                      outcome="failure")
        session.commit()
        return str(exc)
    audit_request(session, principal, action,
                  query_text(request.url.path, method="POST", subject=subject))
    session.commit()
    return None


@router.post("/admin/deliveries/{delivery_id}/retry")
def ui_retry_delivery(request: Request, delivery_id: int, csrf: str = Form(""),
                      principal: Principal = Depends(ui_admin),
                      session: Session = Depends(get_session)) -> Response:
    _check_csrf(request, csrf)
    refused = _admin_action(session, principal, request, "admin.delivery.retry",
                            {"delivery_id": delivery_id},
                            lambda: retry_delivery(session, delivery_id, principal.name))
    if refused:
        return _admin_redirect(refused, error=True)
    enqueue_delivery(delivery_id)
    return _admin_redirect(f"delivery {delivery_id} is pending again")


@router.post("/admin/jobs/{job_id}/{verb}")
def ui_job_action(request: Request, job_id: int, verb: str, csrf: str = Form(""),
                  principal: Principal = Depends(ui_admin),
                  session: Session = Depends(get_session)) -> Response:
    _check_csrf(request, csrf)
    if verb not in ("retry", "cancel"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such action")
    fn = retry_job if verb == "retry" else cancel_job
    refused = _admin_action(session, principal, request, f"admin.job.{verb}", {"job_id": job_id},
                            lambda: fn(session, job_id, principal.name))
    if refused:
        return _admin_redirect(refused, error=True)
    return _admin_redirect(f"job {job_id}: {'pending again' if verb == 'retry' else 'cancelled'}")


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@router.post("/admin/destinations")
def ui_add_destination(request: Request, name: str = Form(max_length=64),
                       ae_title: str = Form(max_length=16), host: str = Form(max_length=255),
                       port: int = Form(ge=1, le=65535), send: str = Form("sr"),
                       tls: bool = Form(False), csrf: str = Form(""),
                       principal: Principal = Depends(ui_admin),
                       session: Session = Depends(get_session)) -> Response:
    _check_csrf(request, csrf)
    refused = _admin_action(
        session, principal, request, "admin.destination.add",
        {"name": name, "ae_title": ae_title, "host": host, "port": port, "send": send, "tls": tls},
        lambda: admin.add_destination(session, name, ae_title, host, port, send=send, tls=tls))
    return _admin_redirect(refused, error=True) if refused else _admin_redirect(
        f"destination {name} added")


@router.post("/admin/calling-aes")
def ui_add_calling_ae(request: Request, ae_title: str = Form(max_length=16),
                      host: str = Form("", max_length=255),
                      description: str = Form("", max_length=255),
                      destinations: str = Form("", max_length=1024), csrf: str = Form(""),
                      principal: Principal = Depends(ui_admin),
                      session: Session = Depends(get_session)) -> Response:
    _check_csrf(request, csrf)
    refused = _admin_action(
        session, principal, request, "admin.calling_ae.add",
        {"ae_title": ae_title, "host": host, "destinations": _list(destinations)},
        lambda: admin.add_calling_ae(session, ae_title, host or None, description or None,
                                     _list(destinations)))
    return _admin_redirect(refused, error=True) if refused else _admin_redirect(
        f"calling AE title {ae_title} added")


@router.post("/admin/routes")
def ui_add_route(request: Request, name: str = Form(max_length=64), order: int = Form(100),
                 calling_ae_title: str = Form("", max_length=16),
                 modality: str = Form("", max_length=16),
                 body_part_examined: str = Form("", max_length=64),
                 action: str = Form("process"), urgent: bool = Form(False),
                 destinations: str = Form("", max_length=1024), csrf: str = Form(""),
                 principal: Principal = Depends(ui_admin),
                 session: Session = Depends(get_session)) -> Response:
    _check_csrf(request, csrf)
    fields = {"order": order, "calling_ae_title": calling_ae_title, "modality": modality,
              "body_part_examined": body_part_examined, "action": action, "urgent": urgent,
              "destinations": _list(destinations)}
    refused = _admin_action(session, principal, request, "admin.route.add",
                            {"name": name, **fields},
                            lambda: admin.add_route(session, name, **fields))
    return _admin_redirect(refused, error=True) if refused else _admin_redirect(
        f"route {name} added")


_REMOVERS = {
    "destinations": ("admin.destination.remove", admin.remove_destination, "destination"),
    "calling-aes": ("admin.calling_ae.remove", admin.remove_calling_ae, "calling AE title"),
    "routes": ("admin.route.remove", admin.remove_route, "route"),
}


@router.post("/admin/{kind}/{name}/remove")
def ui_remove(request: Request, kind: str, name: str, csrf: str = Form(""),
              principal: Principal = Depends(ui_admin),
              session: Session = Depends(get_session)) -> Response:
    _check_csrf(request, csrf)
    if kind not in _REMOVERS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "nothing to remove there")
    action, remove, what = _REMOVERS[kind]
    refused = _admin_action(session, principal, request, action, {"name": name},
                            lambda: remove(session, name))
    return _admin_redirect(refused, error=True) if refused else _admin_redirect(
        f"{what} {name} removed")
