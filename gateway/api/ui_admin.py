"""Administrators' web pages: work to retry, destinations (C-ECHO, edit, enable/disable), calling
AE titles and routes (edit), each removal confirmed on a page of its own.

Every form is a plain HTML form (no script needed) carrying the CSRF value; every change goes
through :mod:`gateway.admin` or :mod:`.operations`, as the API's do, and is audited the same way,
refusals included. An auditor asking for any of these pages gets the styled 403 page, and the
refusal is recorded (``auth.forbidden``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from .. import admin
from common.models import Delivery, DeliveryState, JobState
from common.settings import AE_TITLE_LENGTH
from .auditing import audit_request, query_text
from .auth import Principal, get_session, get_settings
from .hooks import enqueue_delivery
from .operations import (
    ActionNotAllowedError,
    DeliveryNotFoundError,
    DestinationMissingError,
    JobNotFoundError,
    cancel_delivery,
    cancel_job,
    retry_delivery,
    retry_job,
)
from .query_deliveries import DeliveryFilters, list_deliveries, list_jobs
from .schemas import (
    HOST_LENGTH,
    NAME_LENGTH,
    DeliveryOut,
    LongFilter,
    Port,
    RouteOrder,
    ShortFilter,
)
from .ui import check_csrf, error_page, page, page_params, templates, ui_admin

__all__ = ["router"]

router = APIRouter(prefix="/ui/admin", include_in_schema=False)

#: Deliveries listed at most on a page (failed, and pending ones already tried: being retried).
DELIVERIES_SHOWN = 200


def _redirect(path: str, message: str, error: bool = False) -> Response:
    key = "error" if error else "message"
    return RedirectResponse(f"{path}?{urlencode({key: message})}",
                            status_code=status.HTTP_303_SEE_OTHER)


def _notice(request: Request) -> dict[str, Any]:
    params = page_params(request, ("message", "error"))
    return {"message": params.get("message"), "error": params.get("error")}


def _act(session: Session, principal: Principal, request: Request, action: str,
         subject: dict[str, Any], fn: Callable[[], object]) -> str | None:
    """Run ``fn()``; record success or refusal; return the refusal message or None."""
    try:
        fn()
    except (admin.AdminError, JobNotFoundError, DeliveryNotFoundError,
            ActionNotAllowedError, DestinationMissingError) as exc:
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


def _submit(session: Session, principal: Principal, request: Request, action: str,
            subject: dict[str, Any], fn: Callable[[], object], back: str, done: str) -> Response:
    """Run the change (:func:`_act`) and go back to the page ``back``, saying ``done`` or why
    it was refused."""
    refused = _act(session, principal, request, action, subject, fn)
    return _redirect(back, refused, error=True) if refused else _redirect(back, done)


def _edit_page(request: Request, principal: Principal, template: str, key: str,
               get: Callable[[], object], **context: Any) -> HTMLResponse:
    """The edit form of the row ``get()`` finds (passed to the template as ``key``), or the 404
    page."""
    page_params(request, ())
    try:
        row = get()
    except admin.NotFoundError as exc:
        return error_page(request, status.HTTP_404_NOT_FOUND, str(exc))
    context[key] = row
    return page(request, template, principal, **context)


def _destination_names(session: Session) -> list[str]:
    return [d.name for d in admin.list_destinations(session)]


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# -- the forms: each field and its limits once, shared by the add and the edit form -------------
# The limits are the API's (.schemas); the pages check no more than their length, and leave the
# rest to gateway.admin, whose refusal is shown on the page.

_Name = Annotated[str, StringConstraints(max_length=NAME_LENGTH)]
_AETitle = Annotated[str, StringConstraints(max_length=AE_TITLE_LENGTH)]
_Host = Annotated[str, StringConstraints(max_length=HOST_LENGTH)]
#: A caller's description (``common.models``: String(255)).
_Description = Annotated[str, StringConstraints(max_length=255)]
#: Destination names, comma separated.
_Names = Annotated[str, StringConstraints(max_length=1024)]


class _Form(BaseModel):
    """A page's form: every one carries the CSRF value (``check_csrf``)."""

    csrf: str = ""


class _NamedForm(_Form):
    """The key of a new destination or route. A ``New...Form`` names it after the edit form's
    class, so that its field comes first (pydantic orders fields base first), as on the page."""

    name: _Name


class _TitledForm(_Form):
    ae_title: _AETitle


class DestinationForm(_Form):
    """What the edit form of a destination changes (its name is its key and stays)."""

    ae_title: _AETitle
    host: _Host
    port: Port
    send: str = "sr"
    tls: bool = False

    def fields(self) -> dict[str, Any]:
        """The destination's fields as :func:`gateway.admin.update_destination` takes them."""
        return self.model_dump(include={"ae_title", "host", "port", "send", "tls"})


class NewDestinationForm(DestinationForm, _NamedForm):
    pass


class CallerForm(_Form):
    """What the edit form of a calling AE title changes (the AE title is its key and stays)."""

    host: _Host = ""
    description: _Description = ""
    destinations: _Names = ""


class NewCallerForm(CallerForm, _TitledForm):
    pass


class RouteForm(_Form):
    """What the edit form of a route changes (its name is its key and stays)."""

    order: RouteOrder = 100
    calling_ae_title: ShortFilter = ""
    modality: ShortFilter = ""
    body_part_examined: LongFilter = ""
    series_description: LongFilter = ""
    action: str = "process"
    urgent: bool = False
    destinations: _Names = ""

    def fields(self) -> dict[str, Any]:
        """The route's fields as :func:`gateway.admin.add_route` takes them."""
        return {"order": self.order, "calling_ae_title": self.calling_ae_title.strip(),
                "modality": self.modality.strip().upper(),
                "body_part_examined": self.body_part_examined.strip(),
                "series_description": self.series_description.strip(), "action": self.action,
                "urgent": self.urgent, "destinations": _list(self.destinations)}


class NewRouteForm(RouteForm, _NamedForm):
    pass


def _html_limits(form: type[BaseModel]) -> dict[str, dict[str, int]]:
    """Each field's limits as HTML attributes (``maxlength``, ``min``, ``max``; the templates
    write them with ``xmlattr``): a page's input asks what its form model checks."""
    return {name: {attr: prop[key] for key, attr in (("minimum", "min"), ("maximum", "max"),
                                                     ("maxLength", "maxlength")) if key in prop}
            for name, prop in form.model_json_schema()["properties"].items()}


templates.env.globals["limits"] = {"destination": _html_limits(NewDestinationForm),
                                   "caller": _html_limits(NewCallerForm),
                                   "route": _html_limits(NewRouteForm)}


def _troubled_deliveries(session: Session, destination: str | None = None) -> list[DeliveryOut]:
    """Failed deliveries and pending ones already tried (being retried), newest first."""
    failed, _ = list_deliveries(session, DeliveryFilters(state=DeliveryState.FAILED.value,
                                                         destination_name=destination),
                                limit=DELIVERIES_SHOWN, cursor=None)
    pending, _ = list_deliveries(session, DeliveryFilters(state=DeliveryState.PENDING.value,
                                                          destination_name=destination),
                                 limit=DELIVERIES_SHOWN, cursor=None)
    retrying = [d for d in pending if d.attempts > 0]
    return sorted(failed + retrying, key=lambda d: (d.created_at, d.id), reverse=True)


# -- work to retry ------------------------------------------------------------------------------

@router.get("", response_class=HTMLResponse)
def admin_page(request: Request, principal: Principal = Depends(ui_admin),
               session: Session = Depends(get_session)) -> HTMLResponse:
    notice = _notice(request)
    jobs, _ = list_jobs(session, [JobState.FAILED, JobState.DEAD], limit=200, cursor=None)
    deliveries = _troubled_deliveries(session)
    audit_request(session, principal, "jobs.list",
                  query_text(request.url.path, {"state": ["failed", "dead"],
                                                "delivery_state": ["failed", "retrying"]}),
                  rows=len(jobs) + len(deliveries))
    session.commit()
    return page(request, "admin.html", principal, **notice, jobs=jobs, deliveries=deliveries,
                back="/ui/admin")


@router.post("/deliveries/{delivery_id}/retry")
def ui_retry_delivery(request: Request, delivery_id: int, csrf: str = Form(""),
                      back: str = Form("/ui/admin"),
                      principal: Principal = Depends(ui_admin),
                      session: Session = Depends(get_session)) -> Response:
    check_csrf(request, csrf)
    target = back if back.startswith("/ui/") else "/ui/admin"
    refused = _act(session, principal, request, "admin.delivery.retry",
                   {"delivery_id": delivery_id},
                   lambda: retry_delivery(session, delivery_id, principal.name))
    if refused:
        return _redirect(target, refused, error=True)
    enqueue_delivery(delivery_id)
    return _redirect(target, f"delivery {delivery_id} is pending again")


@router.post("/deliveries/{delivery_id}/cancel")
def ui_cancel_delivery(request: Request, delivery_id: int, csrf: str = Form(""),
                       back: str = Form("/ui/admin"),
                       principal: Principal = Depends(ui_admin),
                       session: Session = Depends(get_session)) -> Response:
    """A pending or failed delivery is cancelled (it can be retried later)."""
    check_csrf(request, csrf)
    target = back if back.startswith("/ui/") else "/ui/admin"
    return _submit(session, principal, request, "admin.delivery.cancel",
                   {"delivery_id": delivery_id},
                   lambda: cancel_delivery(session, delivery_id, principal.name),
                   target, f"delivery {delivery_id} cancelled")


@router.post("/jobs/{job_id}/{verb}")
def ui_job_action(request: Request, job_id: int, verb: str, csrf: str = Form(""),
                  principal: Principal = Depends(ui_admin),
                  session: Session = Depends(get_session)) -> Response:
    check_csrf(request, csrf)
    if verb not in ("retry", "cancel"):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such action")
    fn = retry_job if verb == "retry" else cancel_job
    refused = _act(session, principal, request, f"admin.job.{verb}", {"job_id": job_id},
                   lambda: fn(session, job_id, principal.name))
    if refused:
        return _redirect("/ui/admin", refused, error=True)
    return _redirect("/ui/admin",
                     f"job {job_id}: {'pending again' if verb == 'retry' else 'cancelled'}")


# -- destinations -------------------------------------------------------------------------------

_DESTINATIONS = "/ui/admin/destinations"


@router.get("/destinations", response_class=HTMLResponse)
def destinations_page(request: Request, principal: Principal = Depends(ui_admin),
                      session: Session = Depends(get_session)) -> HTMLResponse:
    notice = _notice(request)
    deliveries = _troubled_deliveries(session)
    audit_request(session, principal, "deliveries.search",
                  query_text(request.url.path, {"state": ["failed", "retrying"]}),
                  rows=len(deliveries))
    session.commit()
    counts: dict[str, dict[str, int]] = {}
    for d in deliveries:
        key = "failed" if d.state == DeliveryState.FAILED.value else "retrying"
        counts.setdefault(d.destination_name, {}).setdefault(key, 0)
        counts[d.destination_name][key] += 1
    return page(request, "destinations.html", principal, **notice,
                destinations=admin.list_destinations(session), counts=counts,
                deliveries=deliveries, back=_DESTINATIONS)


@router.post("/destinations")
def ui_add_destination(request: Request, form: Annotated[NewDestinationForm, Form()],
                       principal: Principal = Depends(ui_admin),
                       session: Session = Depends(get_session)) -> Response:
    check_csrf(request, form.csrf)
    fields = form.fields()
    return _submit(session, principal, request, "admin.destination.add",
                   {"name": form.name, **fields},
                   lambda: admin.add_destination(session, form.name, **fields),
                   _DESTINATIONS, f"destination {form.name} added")


@router.get("/destinations/{name}/edit", response_class=HTMLResponse)
def edit_destination_form(request: Request, name: str, principal: Principal = Depends(ui_admin),
                          session: Session = Depends(get_session)) -> HTMLResponse:
    return _edit_page(request, principal, "destination_edit.html", "d",
                      lambda: admin.get_destination(session, name))


@router.post("/destinations/{name}/edit")
def ui_edit_destination(request: Request, name: str, form: Annotated[DestinationForm, Form()],
                        principal: Principal = Depends(ui_admin),
                        session: Session = Depends(get_session)) -> Response:
    check_csrf(request, form.csrf)
    fields = form.fields()
    return _submit(session, principal, request, "admin.destination.update",
                   {"name": name, **fields},
                   lambda: admin.update_destination(session, name, **fields),
                   _DESTINATIONS, f"destination {name} changed")


@router.post("/destinations/{name}/echo")
def ui_echo_destination(request: Request, name: str, csrf: str = Form(""),
                        principal: Principal = Depends(ui_admin),
                        session: Session = Depends(get_session)) -> Response:
    """C-ECHO the destination now (PS3.4 A, Verification), as ``dest test`` does; the result is
    shown on the destinations page and recorded (``admin.destination.echo``)."""
    from common.dimse_status import category
    from sender.scu import SenderError, echo

    check_csrf(request, csrf)
    try:
        row = admin.get_destination(session, name)
    except admin.NotFoundError as exc:
        return _redirect(_DESTINATIONS, str(exc), error=True)
    where = f"{row.ae_title}@{row.host}:{row.port}"
    session.rollback()  # no transaction held open while the network answers
    try:
        code = echo(get_settings(request), name)
    except (SenderError, OSError) as exc:
        result, ok = f"C-ECHO {name} ({where}) failed: {exc}", False
    else:
        ok = code == 0
        result = f"C-ECHO {name} ({where}): status 0x{code:04X} ({category(code)})"
    audit_request(session, principal, "admin.destination.echo",
                  query_text(request.url.path, method="POST", subject={"name": name},
                             result=result), outcome="success" if ok else "failure")
    session.commit()
    return _redirect(_DESTINATIONS, result, error=not ok)


# -- calling AE titles --------------------------------------------------------------------------

_CALLERS = "/ui/admin/calling-aes"


@router.get("/calling-aes", response_class=HTMLResponse)
def callers_page(request: Request, principal: Principal = Depends(ui_admin),
                 session: Session = Depends(get_session)) -> HTMLResponse:
    notice = _notice(request)
    return page(request, "callers.html", principal, **notice,
                calling_aes=admin.list_calling_aes(session),
                destination_names=_destination_names(session))


@router.post("/calling-aes")
def ui_add_calling_ae(request: Request, form: Annotated[NewCallerForm, Form()],
                      principal: Principal = Depends(ui_admin),
                      session: Session = Depends(get_session)) -> Response:
    check_csrf(request, form.csrf)
    destinations = _list(form.destinations)
    return _submit(
        session, principal, request, "admin.calling_ae.add",
        {"ae_title": form.ae_title, "host": form.host, "destinations": destinations},
        lambda: admin.add_calling_ae(session, form.ae_title, form.host or None,
                                     form.description or None, destinations),
        _CALLERS, f"calling AE title {form.ae_title} added")


@router.get("/calling-aes/{ae_title}/edit", response_class=HTMLResponse)
def edit_caller_form(request: Request, ae_title: str, principal: Principal = Depends(ui_admin),
                     session: Session = Depends(get_session)) -> HTMLResponse:
    return _edit_page(request, principal, "caller_edit.html", "c",
                      lambda: admin.get_calling_ae(session, ae_title),
                      destination_names=_destination_names(session))


@router.post("/calling-aes/{ae_title}/edit")
def ui_edit_calling_ae(request: Request, ae_title: str, form: Annotated[CallerForm, Form()],
                       principal: Principal = Depends(ui_admin),
                       session: Session = Depends(get_session)) -> Response:
    check_csrf(request, form.csrf)
    destinations = _list(form.destinations)
    return _submit(
        session, principal, request, "admin.calling_ae.update",
        {"ae_title": ae_title, "host": form.host, "description": form.description,
         "destinations": destinations},
        lambda: admin.update_calling_ae(session, ae_title, form.host or None,
                                        form.description or None, destinations),
        _CALLERS, f"calling AE title {ae_title} changed")


# -- routes -------------------------------------------------------------------------------------

_ROUTES = "/ui/admin/routes"


@router.get("/routes", response_class=HTMLResponse)
def routes_page(request: Request, principal: Principal = Depends(ui_admin),
                session: Session = Depends(get_session)) -> HTMLResponse:
    notice = _notice(request)
    return page(request, "routes.html", principal, **notice, routes=admin.list_routes(session),
                destination_names=_destination_names(session),
                actions=admin.ROUTE_ACTIONS)


@router.post("/routes")
def ui_add_route(request: Request, form: Annotated[NewRouteForm, Form()],
                 principal: Principal = Depends(ui_admin),
                 session: Session = Depends(get_session)) -> Response:
    check_csrf(request, form.csrf)
    fields = form.fields()
    return _submit(session, principal, request, "admin.route.add", {"name": form.name, **fields},
                   lambda: admin.add_route(session, form.name, **fields),
                   _ROUTES, f"route {form.name} added")


@router.get("/routes/{name}/edit", response_class=HTMLResponse)
def edit_route_form(request: Request, name: str, principal: Principal = Depends(ui_admin),
                    session: Session = Depends(get_session)) -> HTMLResponse:
    return _edit_page(request, principal, "route_edit.html", "r",
                      lambda: admin.get_route(session, name), actions=admin.ROUTE_ACTIONS,
                      destination_names=_destination_names(session))


@router.post("/routes/{name}/edit")
def ui_edit_route(request: Request, name: str, form: Annotated[RouteForm, Form()],
                  principal: Principal = Depends(ui_admin),
                  session: Session = Depends(get_session)) -> Response:
    check_csrf(request, form.csrf)
    fields = form.fields()
    return _submit(session, principal, request, "admin.route.update", {"name": name, **fields},
                   lambda: admin.update_route(session, name, **fields),
                   _ROUTES, f"route {name} changed")


# -- enable / disable ---------------------------------------------------------------------------

_SWITCHES: dict[str, tuple[str, Callable[[Session, str, bool], object], str, str]] = {
    "destinations": ("admin.destination", admin.set_destination_enabled, "destination",
                     _DESTINATIONS),
    "calling-aes": ("admin.calling_ae", admin.set_calling_ae_enabled, "calling AE title",
                    _CALLERS),
    "routes": ("admin.route", admin.set_route_enabled, "route", _ROUTES),
}


def _switch(request: Request, kind: str, name: str, csrf: str, principal: Principal,
            session: Session, enabled: bool) -> Response:
    check_csrf(request, csrf)
    if kind not in _SWITCHES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "nothing to enable or disable there")
    prefix, setter, what, back = _SWITCHES[kind]
    verb = "enable" if enabled else "disable"
    return _submit(session, principal, request, f"{prefix}.{verb}", {"name": name},
                   lambda: setter(session, name, enabled),
                   back, f"{what} {name} {verb}d")


@router.post("/{kind}/{name}/enable")
def ui_enable(request: Request, kind: str, name: str, csrf: str = Form(""),
              principal: Principal = Depends(ui_admin),
              session: Session = Depends(get_session)) -> Response:
    return _switch(request, kind, name, csrf, principal, session, True)


@router.post("/{kind}/{name}/disable")
def ui_disable(request: Request, kind: str, name: str, csrf: str = Form(""),
               principal: Principal = Depends(ui_admin),
               session: Session = Depends(get_session)) -> Response:
    return _switch(request, kind, name, csrf, principal, session, False)


# -- removal, confirmed -------------------------------------------------------------------------

_REMOVERS: dict[str, tuple[str, Callable[[Session, str], object], str, str]] = {
    "destinations": ("admin.destination.remove", admin.remove_destination, "destination",
                     _DESTINATIONS),
    "calling-aes": ("admin.calling_ae.remove", admin.remove_calling_ae, "calling AE title",
                    _CALLERS),
    "routes": ("admin.route.remove", admin.remove_route, "route", _ROUTES),
}


def _consequences(session: Session, kind: str, name: str) -> Sequence[str]:
    if kind == "destinations":
        pending = session.scalar(
            select(Delivery.id).where(Delivery.destination_name == name,
                                      Delivery.state.in_([DeliveryState.PENDING,
                                                          DeliveryState.FAILED])).limit(1))
        out = ["Routing stops sending results of new studies to it."]
        if pending is not None:
            out.append("It still has deliveries not sent (pending or failed); they are cancelled with the "
                       "reason \"destination removed\" (an administrator may retry them once a "
                       "destination of that name exists again).")
        return out
    if kind == "calling-aes":
        return ["If it is the last calling AE title, the allow-list is empty again."]
    return ["Studies it matched are routed by the next matching route, or by default."]


@router.get("/{kind}/{name}/remove", response_class=HTMLResponse)
def confirm_remove(request: Request, kind: str, name: str,
                   principal: Principal = Depends(ui_admin),
                   session: Session = Depends(get_session)) -> HTMLResponse:
    """The confirmation step of a removal: a page with a POST form (works without JavaScript)."""
    page_params(request, ())
    if kind not in _REMOVERS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "nothing to remove there")
    _action, _remove, what, back = _REMOVERS[kind]
    return page(request, "confirm.html", principal, what=what, name=name, back=back,
                action=f"/ui/admin/{kind}/{quote(name, safe='')}/remove",
                consequences=_consequences(session, kind, name))


@router.post("/{kind}/{name}/remove")
def ui_remove(request: Request, kind: str, name: str, csrf: str = Form(""),
              principal: Principal = Depends(ui_admin),
              session: Session = Depends(get_session)) -> Response:
    check_csrf(request, csrf)
    if kind not in _REMOVERS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "nothing to remove there")
    action, remove, what, back = _REMOVERS[kind]
    return _submit(session, principal, request, action, {"name": name},
                   lambda: remove(session, name),
                   back, f"{what} {name} removed")
