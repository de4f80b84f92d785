"""Administrators' endpoints: AE titles, destinations, routes; retry/cancel jobs; retry deliveries.

Configuration changes go through :mod:`gateway.admin` (shared with the CLI). Every change is
recorded in the audit log in the same transaction.
"""

from __future__ import annotations

import json
from functools import partial
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from sqlalchemy.orm import Session

from .. import admin
from common.models import CallingAE, DeliveryState, Destination, JobState
from common.settings import AE_TITLE_LENGTH
from .auditing import audit_request, audit_search, query_text
from .auth import Principal, get_session, require_admin
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
    NAME_LENGTH,
    NAME_PATTERN,
    RowId,
    AUTH_RESPONSES,
    ActionResult,
    CallingAEIn,
    CallingAEOut,
    CallingAEPatch,
    DeliveryPage,
    DestinationIn,
    DestinationOut,
    DestinationPatch,
    ErrorOut,
    JobPage,
    RouteIn,
    RouteOut,
    RoutePatch,
)
from .query_check import reject_unknown_query_parameters

__all__ = ["router", "admin_error_status"]

router = APIRouter(prefix="/api/v1/admin", tags=["admin"], responses=AUTH_RESPONSES,
                   dependencies=[Depends(reject_unknown_query_parameters)])

Name = Annotated[str, Path(min_length=1, max_length=NAME_LENGTH, pattern=NAME_PATTERN)]
CallerTitle = Annotated[str, Path(min_length=1, max_length=AE_TITLE_LENGTH)]
#: FastAPI's ``responses=`` type: status code -> OpenAPI response fields
_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorOut}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut}}


def admin_error_status(exc: Exception) -> int:
    if isinstance(exc, (admin.NotFoundError, JobNotFoundError, DeliveryNotFoundError)):
        return status.HTTP_404_NOT_FOUND
    if isinstance(exc, (admin.AlreadyExistsError, ActionNotAllowedError, DestinationMissingError)):
        return status.HTTP_409_CONFLICT
    return status.HTTP_400_BAD_REQUEST


def _change(session: Session, principal: Principal, request: Request, action: str,
            subject: dict[str, object]) -> None:
    audit_request(session, principal, action,
                  query_text(request.url.path, method=request.method,
                             subject=json.loads(json.dumps(subject, default=str))))


def _refused(session: Session, principal: Principal, request: Request, action: str,
             exc: Exception) -> HTTPException:
    """Roll back the attempt, record the refusal, and build the HTTP error."""
    session.rollback()
    audit_request(session, principal, action,
                  query_text(request.url.path, method=request.method, error=str(exc)),
                  outcome="failure")
    session.commit()
    return HTTPException(admin_error_status(exc), str(exc))


_T = TypeVar("_T")
_Refusals = tuple[type[Exception], ...]


def _recorded(session: Session, principal: Principal, request: Request, action: str,
              subject: dict[str, object] | Callable[[_T], dict[str, object]],
              fn: Callable[[], _T], refusals: _Refusals = (admin.AdminError,)) -> _T:
    """Run the change ``fn()`` and record it (``subject``, or ``subject(result)``) in the same
    transaction; a refusal is rolled back, recorded and raised as the HTTP error."""
    try:
        result = fn()
    except refusals as exc:
        raise _refused(session, principal, request, action, exc) from None
    _change(session, principal, request, action,
            subject(result) if callable(subject) else subject)
    session.commit()
    return result


_Row = TypeVar("_Row")


def _patch(change: Mapping[str, Any], row: _Row, update: Callable[[_Row], _Row],
           set_enabled: Callable[[bool], _Row]) -> _Row:
    """A PATCH: ``update`` the row when a field other than ``enabled`` is given, then enable or
    disable it when ``enabled`` is."""
    if change.keys() - {"enabled"}:
        row = update(row)
    if change.get("enabled") is not None:
        row = set_enabled(change["enabled"])
    return row


# -- calling AE titles --------------------------------------------------------------------------

@router.get("/calling-aes", response_model=list[CallingAEOut])
def calling_aes(principal: Principal = Depends(require_admin),
                session: Session = Depends(get_session)) -> list[CallingAEOut]:
    return [CallingAEOut.model_validate(r) for r in admin.list_calling_aes(session)]


@router.post("/calling-aes", response_model=CallingAEOut, status_code=201, responses=_ERRORS)
def add_calling_ae(body: CallingAEIn, request: Request,
                   principal: Principal = Depends(require_admin),
                   session: Session = Depends(get_session)) -> CallingAEOut:
    row = _recorded(session, principal, request, "admin.calling_ae.add", body.model_dump(),
                    lambda: admin.add_calling_ae(session, body.ae_title, body.host,
                                                 body.description, body.destinations))
    return CallingAEOut.model_validate(row)


@router.patch("/calling-aes/{ae_title}", response_model=CallingAEOut, responses=_ERRORS)
def change_calling_ae(ae_title: CallerTitle,
                      body: CallingAEPatch, request: Request,
                      principal: Principal = Depends(require_admin),
                      session: Session = Depends(get_session)) -> CallingAEOut:
    """Change a caller's host, description or destinations, or disable it (refused like an
    unknown caller; the allow-list stays enforced)."""
    change = body.model_dump(exclude_unset=True)

    def update(row: CallingAE) -> CallingAE:
        return admin.update_calling_ae(
            session, ae_title, change.get("host", row.host),
            change.get("description", row.description),
            change["destinations"] if change.get("destinations") is not None else row.destinations)

    row = _recorded(session, principal, request, "admin.calling_ae.update",
                    {"ae_title": ae_title, **change},
                    lambda: _patch(change, admin.get_calling_ae(session, ae_title), update,
                                   partial(admin.set_calling_ae_enabled, session, ae_title)))
    return CallingAEOut.model_validate(row)


@router.delete("/calling-aes/{ae_title}", response_model=ActionResult, responses=_ERRORS)
def remove_calling_ae(ae_title: CallerTitle,
                      request: Request, principal: Principal = Depends(require_admin),
                      session: Session = Depends(get_session)) -> ActionResult:
    _recorded(session, principal, request, "admin.calling_ae.remove", {"ae_title": ae_title},
              lambda: admin.remove_calling_ae(session, ae_title))
    return ActionResult(detail=f"calling AE title {ae_title.strip()} removed")


# -- destinations -------------------------------------------------------------------------------

@router.get("/destinations", response_model=list[DestinationOut])
def destinations(principal: Principal = Depends(require_admin),
                 session: Session = Depends(get_session)) -> list[DestinationOut]:
    return [DestinationOut.model_validate(r) for r in admin.list_destinations(session)]


@router.post("/destinations", response_model=DestinationOut, status_code=201, responses=_ERRORS)
def add_destination(body: DestinationIn, request: Request,
                    principal: Principal = Depends(require_admin),
                    session: Session = Depends(get_session)) -> DestinationOut:
    row = _recorded(session, principal, request, "admin.destination.add", body.model_dump(),
                    lambda: admin.add_destination(session, body.name, body.ae_title, body.host,
                                                  body.port, send=body.send, tls=body.tls))
    return DestinationOut.model_validate(row)


@router.patch("/destinations/{name}", response_model=DestinationOut, responses=_ERRORS)
def change_destination(name: Name, body: DestinationPatch, request: Request,
                       principal: Principal = Depends(require_admin),
                       session: Session = Depends(get_session)) -> DestinationOut:
    """Change a destination's address or what it is sent, or disable it (left out of routing,
    nothing sent to it)."""
    change = body.model_dump(exclude_unset=True)

    def update(row: Destination) -> Destination:
        return admin.update_destination(
            session, name, change.get("ae_title") or row.ae_title, change.get("host") or row.host,
            change.get("port") or row.port, send=change.get("send") or row.send,
            tls=row.tls if change.get("tls") is None else change["tls"])

    row = _recorded(session, principal, request, "admin.destination.update",
                    {"name": name, **change},
                    lambda: _patch(change, admin.get_destination(session, name), update,
                                   partial(admin.set_destination_enabled, session, name)))
    return DestinationOut.model_validate(row)


@router.delete("/destinations/{name}", response_model=ActionResult, responses=_ERRORS)
def remove_destination(name: Name, request: Request,
                       principal: Principal = Depends(require_admin),
                       session: Session = Depends(get_session)) -> ActionResult:
    cancelled = _recorded(session, principal, request, "admin.destination.remove",
                          lambda ids: {"name": name, "cancelled_deliveries": list(ids)},
                          lambda: admin.remove_destination(session, name))
    return ActionResult(detail=f"destination {name} removed" + _cancelled(cancelled))


def _cancelled(ids: Sequence[int]) -> str:
    return f"; {len(ids)} pending or failed deliveries to it cancelled" if ids else ""


# -- routes -------------------------------------------------------------------------------------

@router.get("/routes", response_model=list[RouteOut])
def routes(principal: Principal = Depends(require_admin),
           session: Session = Depends(get_session)) -> list[RouteOut]:
    return [RouteOut.model_validate(r) for r in admin.list_routes(session)]


@router.post("/routes", response_model=RouteOut, status_code=201, responses=_ERRORS)
def add_route(body: RouteIn, request: Request, principal: Principal = Depends(require_admin),
              session: Session = Depends(get_session)) -> RouteOut:
    row = _recorded(session, principal, request, "admin.route.add", body.model_dump(),
                    lambda: admin.add_route(session, body.name,
                                            **body.model_dump(exclude={"name"})))
    return RouteOut.model_validate(row)


@router.patch("/routes/{name}", response_model=RouteOut, responses=_ERRORS)
def change_route(name: Name, body: RoutePatch, request: Request,
                 principal: Principal = Depends(require_admin),
                 session: Session = Depends(get_session)) -> RouteOut:
    """Change a routing rule, or disable it (it matches no study)."""
    change = body.model_dump(exclude_unset=True)
    fields = {k: v for k, v in change.items() if k != "enabled" and v is not None}
    row = _recorded(session, principal, request, "admin.route.update", {"name": name, **change},
                    lambda: _patch(change, admin.get_route(session, name),
                                   lambda row: admin.update_route(session, name, **fields)
                                   if fields else row,
                                   partial(admin.set_route_enabled, session, name)))
    return RouteOut.model_validate(row)


@router.delete("/routes/{name}", response_model=ActionResult, responses=_ERRORS)
def remove_route(name: Name, request: Request, principal: Principal = Depends(require_admin),
                 session: Session = Depends(get_session)) -> ActionResult:
    _recorded(session, principal, request, "admin.route.remove", {"name": name},
              lambda: admin.remove_route(session, name))
    return ActionResult(detail=f"route {name} removed")


# -- jobs ---------------------------------------------------------------------------------------

@router.get("/jobs", response_model=JobPage, responses={400: {"model": ErrorOut}})
def jobs(
    request: Request,
    state: Annotated[list[Literal["pending", "queued", "running", "inferred", "sr_written",
                                  "delivery_failed", "delivered", "failed", "dead", "cancelled"]] | None,
                     Query(description="repeat for several; default failed and dead")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")] = None,
    principal: Principal = Depends(require_admin),
    session: Session = Depends(get_session),
) -> JobPage:
    """Jobs by state, most recently changed first (default: the failed and dead ones)."""
    states = [JobState(s) for s in (state or ["failed", "dead"])]
    items, next_cursor = list_jobs(session, states, limit=limit, cursor=cursor)
    audit_search(session, principal, request.url.path, "jobs.search",
                 {"state": [s.value for s in states]}, limit=limit, cursor=cursor, rows=len(items))
    return JobPage(items=items, next_cursor=next_cursor)


@router.post("/jobs/{job_id}/retry", response_model=ActionResult, responses=_ERRORS)
def retry(job_id: RowId, request: Request, principal: Principal = Depends(require_admin),
          session: Session = Depends(get_session)) -> ActionResult:
    """A failed or dead job becomes pending again; the outbox publishes it."""
    job = _recorded(session, principal, request, "admin.job.retry", {"job_id": job_id},
                    lambda: retry_job(session, job_id, principal.name),
                    (JobNotFoundError, ActionNotAllowedError))
    return ActionResult(detail=f"job {job.id} is pending again")


@router.post("/jobs/{job_id}/cancel", response_model=ActionResult, responses=_ERRORS)
def cancel(job_id: RowId, request: Request, principal: Principal = Depends(require_admin),
           session: Session = Depends(get_session)) -> ActionResult:
    job = _recorded(session, principal, request, "admin.job.cancel", {"job_id": job_id},
                    lambda: cancel_job(session, job_id, principal.name),
                    (JobNotFoundError, ActionNotAllowedError))
    return ActionResult(detail=f"job {job.id} cancelled")


# -- deliveries ---------------------------------------------------------------------------------

@router.get("/deliveries/failed", response_model=DeliveryPage, responses={400: {"model": ErrorOut}})
def failed_deliveries(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")] = None,
    principal: Principal = Depends(require_admin),
    session: Session = Depends(get_session),
) -> DeliveryPage:
    filters = DeliveryFilters(state=DeliveryState.FAILED.value)
    items, next_cursor = list_deliveries(session, filters, limit=limit, cursor=cursor)
    audit_search(session, principal, request.url.path, "deliveries.search", filters.as_query(),
                 limit=limit, cursor=cursor, rows=len(items))
    return DeliveryPage(items=items, next_cursor=next_cursor)


@router.get("/deliveries", response_model=DeliveryPage, responses={400: {"model": ErrorOut}})
def deliveries(
    request: Request,
    state: Annotated[list[Literal["pending", "sent", "failed", "cancelled"]] | None,
                     Query(description="repeat for several; default all")] = None,
    destination: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    study_instance_uid: Annotated[str | None, Query(min_length=1, max_length=64,
                                                    pattern=r"^[0-9]+(\.[0-9]+)*$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$")] = None,
    principal: Principal = Depends(require_admin),
    session: Session = Depends(get_session),
) -> DeliveryPage:
    """Deliveries, newest first, each with its attempts (DIMSE status or the exact network error)
    and its state changes with why."""
    filters = DeliveryFilters(state=",".join(state) if state else None, destination_name=destination,
                              study_instance_uid=study_instance_uid)
    items, next_cursor = list_deliveries(session, filters, limit=limit, cursor=cursor)
    audit_search(session, principal, request.url.path, "deliveries.search", filters.as_query(),
                 limit=limit, cursor=cursor, rows=len(items))
    return DeliveryPage(items=items, next_cursor=next_cursor)


@router.post("/deliveries/{delivery_id}/retry", response_model=ActionResult, responses=_ERRORS)
def retry_failed_delivery(delivery_id: RowId, request: Request,
                          principal: Principal = Depends(require_admin),
                          session: Session = Depends(get_session)) -> ActionResult:
    """A failed or cancelled delivery becomes pending (attempts 0, due now) and is handed to the
    sender; refused (409) when its destination was removed."""
    _recorded(session, principal, request, "admin.delivery.retry", {"delivery_id": delivery_id},
              lambda: retry_delivery(session, delivery_id, principal.name),
              (DeliveryNotFoundError, ActionNotAllowedError, DestinationMissingError))
    enqueue_delivery(delivery_id)
    return ActionResult(detail=f"delivery {delivery_id} is pending again")


@router.post("/deliveries/{delivery_id}/cancel", response_model=ActionResult, responses=_ERRORS)
def cancel_pending_delivery(delivery_id: RowId, request: Request,
                            principal: Principal = Depends(require_admin),
                            session: Session = Depends(get_session)) -> ActionResult:
    """A pending or failed delivery is cancelled: it is not attempted again."""
    _recorded(session, principal, request, "admin.delivery.cancel", {"delivery_id": delivery_id},
              lambda: cancel_delivery(session, delivery_id, principal.name),
              (DeliveryNotFoundError, ActionNotAllowedError))
    return ActionResult(detail=f"delivery {delivery_id} cancelled")
