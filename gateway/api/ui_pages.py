"""Web pages for every signed-in reader: the studies list, the audit log, node and queue health.

Each page reads what the API reads and is audited the same way (``studies.search``,
``audit.search``, ``status.read``) in the transaction of the read. Filters are checked as the
API checks them: an unknown parameter or a value a filter cannot take is a 422.
"""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy.orm import Session

from .auditing import audit_request, audit_search, query_text
from .auth import Principal, get_session, get_settings
from .export import EXPORT_FORMATS, stream_export
from .pagination import InvalidCursorError
from .query_audit import AUDIT_EXPORT_COLUMNS, AuditFilters, iter_audit_events, list_audit_events
from .query_studies import StudyFilters, list_studies, study_activity
from .ui import (
    PAGE_SIZE,
    FilterError,
    bom_param,
    choice_filter,
    cursor_param,
    filter_params,
    next_page_url,
    page,
    page_params,
    text_filter,
    ui_principal,
    uid_filter,
    when_filter,
)

__all__ = ["router", "STUDY_STATES"]

router = APIRouter(prefix="/ui", include_in_schema=False)

#: Study states a page may filter by (``common.models.StudyState``).
STUDY_STATES = ("receiving", "complete", "stored")
STUDY_FILTER_KEYS = ("state", "modality", "received_from", "received_to", "calling_ae_title")
AUDIT_FILTER_KEYS = ("actor", "action", "at_from", "at_to", "study_instance_uid")


# -- studies ------------------------------------------------------------------------------------

def _study_filters(params: dict[str, str]) -> StudyFilters:
    modality = text_filter(params, "modality", 16)
    return StudyFilters(
        received_from=when_filter(params, "received_from"),
        received_to=when_filter(params, "received_to"),
        modality=modality.upper() if modality else None,
        calling_ae_title=text_filter(params, "calling_ae_title", 16),
        state=choice_filter(params, "state", STUDY_STATES),
    )


@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request, principal: Principal = Depends(ui_principal),
                 session: Session = Depends(get_session)) -> HTMLResponse:
    """Every study received, newest first, with or without findings."""
    params = page_params(request, (*STUDY_FILTER_KEYS, "cursor"))
    try:
        cursor = cursor_param(params)
        filters = _study_filters(params)
        items, next_cursor = list_studies(session, filters, limit=PAGE_SIZE, cursor=cursor,
                                          show_identifiers=principal.sees_patient_identifiers)
    except (FilterError, InvalidCursorError) as exc:
        return page(request, "studies.html", principal, code=422,
                    params=params, items=[], activity={}, error=str(exc), next_url=None,
                    states=STUDY_STATES)
    activity = study_activity(session, [s.study_instance_uid for s in items])
    audit_search(session, principal, request.url.path, "studies.search", filters.as_query(),
                 limit=PAGE_SIZE, cursor=cursor, rows=len(items))
    return page(request, "studies.html", principal, params=params, items=items,
                activity=activity, error=None, states=STUDY_STATES,
                next_url=next_page_url("/ui/studies", params, next_cursor),
                first_url="/ui/studies?" + urlencode(filter_params(params)) if cursor else None)


# -- audit log ----------------------------------------------------------------------------------

def _audit_filters(params: dict[str, str]) -> AuditFilters:
    return AuditFilters(
        actor=text_filter(params, "actor"), action=text_filter(params, "action"),
        study_instance_uid=uid_filter(params, "study_instance_uid"),
        at_from=when_filter(params, "at_from"), at_to=when_filter(params, "at_to"),
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, principal: Principal = Depends(ui_principal),
               session: Session = Depends(get_session)) -> HTMLResponse:
    """The audit log, newest first; reading it is recorded in it (``audit.search``)."""
    params = page_params(request, (*AUDIT_FILTER_KEYS, "cursor"))
    try:
        cursor = cursor_param(params)
        filters = _audit_filters(params)
        items, next_cursor = list_audit_events(session, filters, limit=PAGE_SIZE, cursor=cursor)
    except (FilterError, InvalidCursorError) as exc:
        return page(request, "audit.html", principal, code=422,
                    params=params, items=[], error=str(exc), next_url=None, export_query="")
    audit_search(session, principal, request.url.path, "audit.search", filters.as_query(),
                 limit=PAGE_SIZE, cursor=cursor, rows=len(items))
    return page(request, "audit.html", principal, params=params, items=items, error=None,
                next_url=next_page_url("/ui/audit", params, next_cursor),
                export_query=urlencode(filter_params(params)))


@router.get("/audit/export")
def audit_export(request: Request,
                 principal: Principal = Depends(ui_principal)) -> StreamingResponse:
    params = page_params(request, (*AUDIT_FILTER_KEYS, "format", "bom"))
    try:
        fmt = choice_filter(params, "format", EXPORT_FORMATS) or "csv"
        bom = bom_param(params)
        filters = _audit_filters(params)
    except FilterError as exc:
        raise HTTPException(422, str(exc)) from None
    return stream_export(
        request.app.state.sessions, lambda s: iter_audit_events(s, filters),
        fmt=fmt, columns=AUDIT_EXPORT_COLUMNS, principal=principal,
        action="audit.export",
        query=query_text(request.url.path, filters.as_query(), format=fmt),
        filename_stem="audit-log", bom=bom,
    )


# -- health -------------------------------------------------------------------------------------

@router.get("/health", response_class=HTMLResponse)
def health_page(request: Request, principal: Principal = Depends(ui_principal),
                session: Session = Depends(get_session)) -> HTMLResponse:
    """What ``medrega-gateway status`` checks (node by C-ECHO, broker, database, workers, model)
    and the queue and storage, checked now."""
    from gateway.status import run_checks

    page_params(request, ())
    # destinations are C-ECHOed one by one from their own page (a button each), not on every view
    checks = run_checks(get_settings(request), destinations=False)
    audit_request(session, principal, "status.read", query_text(request.url.path),
                  rows=len(checks))
    session.commit()
    return page(request, "health.html", principal, checks=checks)
