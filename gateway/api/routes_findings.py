"""Auditors' endpoints: findings, studies, timelines, images, deliveries, the audit log.

Every read records an audit event (who, when, what query, how many rows) in the transaction of
the read itself: the endpoint builds its answer, adds the event, commits, and only then returns.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import Response, StreamingResponse
from pydantic import StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Instance
from workflow.retention import pruned_message
from common.uids import UID_MAXIMUM_LENGTH, UID_PATTERN
from .auditing import audit_request, audit_search, query_text
from .auth import Principal, get_session, get_settings, require_reader
from .export import stream_export
from .query_audit import AUDIT_EXPORT_COLUMNS, AuditFilters, iter_audit_events, list_audit_events
from .query_deliveries import DeliveryFilters, list_deliveries
from .query_findings import EXPORT_COLUMNS, FindingFilters, iter_findings, search_findings
from .query_studies import (
    StudyFilters,
    StudyNotFoundError,
    get_study,
    list_studies,
    study_detail,
    study_timeline,
)
from .regions import pair_regions
from .render import ImageNotAvailableError, render_annotated_png, resolve_spool_path
from .schemas import (
    AUTH_RESPONSES,
    AuditEventPage,
    DeliveryPage,
    DeliveryStatus,
    ErrorOut,
    FindingPage,
    IsoDateTime,
    Language,
    SafeText,
    StudyDetail,
    StudyPage,
    Timeline,
)
from .query_check import reject_unknown_query_parameters

__all__ = ["router", "finding_filters"]

router = APIRouter(prefix="/api/v1", tags=["auditor"], responses=AUTH_RESPONSES,
                   dependencies=[Depends(reject_unknown_query_parameters)])

UidParam = Annotated[str, StringConstraints(min_length=1, max_length=UID_MAXIMUM_LENGTH,
                                             pattern=f"^{UID_PATTERN}$")]
Limit = Annotated[int, Query(ge=1, le=500, description="rows per page")]
Cursor = Annotated[str | None, Query(max_length=200, pattern=r"^[A-Za-z0-9_-]*$",
                                     description="next_cursor of the previous page")]
ShortText = Annotated[str, StringConstraints(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]
ExportFormatQ = Annotated[Literal["csv", "json"], Query(description="csv or json")]
BomQ = Annotated[bool, Query(description="CSV only: start with a UTF-8 byte-order mark, so that "
                                         "Excel reads Chinese text correctly")]

#: FastAPI's ``responses=`` type: status code -> OpenAPI response fields
_Responses = dict[int | str, dict[str, Any]]
_NOT_FOUND: _Responses = {404: {"model": ErrorOut}}
_BAD: _Responses = {400: {"model": ErrorOut}}


def finding_filters(
    created_from: Annotated[IsoDateTime | None, Query(description="findings recorded at or after")] = None,
    created_to: Annotated[IsoDateTime | None, Query(description="findings recorded before")] = None,
    modality: Annotated[ShortText | None, Query(description="series modality, e.g. CT")] = None,
    calling_ae_title: Annotated[ShortText | None, Query(description="AE title that sent the study")] = None,
    label: Annotated[SafeText | None, Query(description="text contained in the region's label")] = None,
    language: Annotated[Language | None, Query(description="en or zh")] = None,
    model_name: Annotated[ShortText | None, Query()] = None,
    weights_id: Annotated[SafeText | None, Query()] = None,
    delivery_status: Annotated[DeliveryStatus | None, Query(
        description="failed: any delivery failed; pending: any pending, none failed; "
                    "sent: all sent; none: no delivery")] = None,
    study_instance_uid: Annotated[UidParam | None, Query()] = None,
) -> FindingFilters:
    return FindingFilters(
        created_from=created_from, created_to=created_to, modality=modality,
        calling_ae_title=calling_ae_title, label=label, language=language, model_name=model_name,
        weights_id=weights_id, delivery_status=delivery_status,
        study_instance_uid=study_instance_uid,
    )


@router.get("/findings", response_model=FindingPage, responses=_BAD)
def search(
    request: Request,
    filters: FindingFilters = Depends(finding_filters),
    limit: Limit = 50,
    cursor: Cursor = None,
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> FindingPage:
    """Search findings, newest first, one page at a time (keyset cursor)."""
    items, next_cursor = search_findings(session, filters, limit=limit, cursor=cursor,
                                         show_identifiers=principal.sees_patient_identifiers)
    audit_search(session, principal, request.url.path, "findings.search", filters.as_query(),
                 limit=limit, cursor=cursor, rows=len(items),
                 study_instance_uid=filters.study_instance_uid)
    return FindingPage(items=items, next_cursor=next_cursor)


_EXPORT_RESPONSES: _Responses = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}},
                      "application/json": {"schema": {"type": "array", "items": {}}}},
          "description": "the matching rows, streamed"},
}


@router.get("/findings/export", response_class=StreamingResponse, responses=_EXPORT_RESPONSES)
def export_findings(
    request: Request,
    format: ExportFormatQ = "csv",
    bom: BomQ = False,
    filters: FindingFilters = Depends(finding_filters),
    principal: Principal = Depends(require_reader),
) -> StreamingResponse:
    """Every matching finding as CSV or JSON, streamed; audited with the number of rows sent."""
    show = principal.sees_patient_identifiers
    return stream_export(
        request.app.state.sessions,
        lambda s: iter_findings(s, filters, show_identifiers=show),
        fmt=format, columns=EXPORT_COLUMNS, principal=principal, action="findings.export",
        query=query_text(request.url.path, filters.as_query(), format=format),
        filename_stem="findings", bom=bom,
    )


@router.get("/studies", response_model=StudyPage, responses=_BAD)
def studies(
    request: Request,
    received_from: IsoDateTime | None = None,
    received_to: IsoDateTime | None = None,
    modality: ShortText | None = None,
    calling_ae_title: ShortText | None = None,
    state: Literal["receiving", "complete", "stored"] | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> StudyPage:
    """Studies, newest first."""
    filters = StudyFilters(received_from=received_from, received_to=received_to,
                           modality=modality, calling_ae_title=calling_ae_title, state=state)
    items, next_cursor = list_studies(session, filters, limit=limit, cursor=cursor,
                                      show_identifiers=principal.sees_patient_identifiers)
    audit_search(session, principal, request.url.path, "studies.search", filters.as_query(),
                 limit=limit, cursor=cursor, rows=len(items))
    return StudyPage(items=items, next_cursor=next_cursor)


def _study_or_404(session: Session, principal: Principal, action: str, path: str, uid: str):
    try:
        return get_study(session, uid)
    except StudyNotFoundError as exc:
        audit_request(session, principal, action, query_text(path), rows=0, outcome="failure",
                      study_instance_uid=uid)
        session.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


@router.get("/studies/{study_instance_uid}", response_model=StudyDetail, responses=_NOT_FOUND)
def study(
    request: Request,
    study_instance_uid: Annotated[UidParam, Path()],
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> StudyDetail:
    """One study: series, findings, timeline and deliveries."""
    row = _study_or_404(session, principal, "study.read", request.url.path, study_instance_uid)
    detail = study_detail(session, row, show_identifiers=principal.sees_patient_identifiers)
    audit_request(session, principal, "study.read", query_text(request.url.path),
                  rows=len(detail.findings), study_instance_uid=study_instance_uid)
    session.commit()
    return detail


@router.get("/studies/{study_instance_uid}/timeline", response_model=Timeline,
            responses=_NOT_FOUND)
def timeline(
    request: Request,
    study_instance_uid: Annotated[UidParam, Path()],
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> Timeline:
    """received, complete, queued, inferred, SR written, delivered ... with durations."""
    row = _study_or_404(session, principal, "study.timeline", request.url.path, study_instance_uid)
    result = study_timeline(session, row)
    audit_request(session, principal, "study.timeline", query_text(request.url.path),
                  rows=len(result.steps), study_instance_uid=study_instance_uid)
    session.commit()
    return result


def annotated_image(
    session: Session, request: Request, principal: Principal, study_instance_uid: str,
    sop_instance_uid: str, frame_number: int | None,
) -> bytes:
    """PNG of one image of the study with its findings drawn; audited as ``study.image``."""
    action, path = "study.image", request.url.path
    row = _study_or_404(session, principal, action, path, study_instance_uid)
    instance = session.scalar(select(Instance).where(
        Instance.sop_instance_uid == sop_instance_uid, Instance.study_id == row.id))
    try:
        if instance is None:
            raise ImageNotAvailableError(f"study has no instance {sop_instance_uid}")
        if instance.pruned_at is not None:
            raise ImageNotAvailableError(pruned_message(study_instance_uid, instance.pruned_at))
        file = resolve_spool_path(get_settings(request).data_dir, instance.path)
        findings, _ = search_findings(
            session, FindingFilters(study_instance_uid=study_instance_uid), limit=1000,
            show_identifiers=False)
        groups = [g for g in pair_regions(findings) if g.sop_instance_uid == sop_instance_uid
                  and (frame_number is None or g.frame_number in (None, frame_number))]
        regions = [r for g in groups for r in g.regions]
        png = render_annotated_png(file, regions, frame_number=frame_number)
    except ImageNotAvailableError as exc:
        audit_request(session, principal, action, query_text(path), rows=0, outcome="failure",
                      study_instance_uid=study_instance_uid)
        session.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None
    audit_request(session, principal, action, query_text(path, frame=frame_number),
                  rows=len(regions), study_instance_uid=study_instance_uid)
    session.commit()
    return png


@router.get(
    "/studies/{study_instance_uid}/instances/{sop_instance_uid}/annotated.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "the image with the model's boxes and labels"},
               **_NOT_FOUND},
)
def image(
    request: Request,
    study_instance_uid: Annotated[UidParam, Path()],
    sop_instance_uid: Annotated[UidParam, Path()],
    frame: Annotated[int | None, Query(ge=1, le=100000)] = None,
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> Response:
    """The referenced image with every region's box and its labels in both languages."""
    png = annotated_image(session, request, principal, study_instance_uid, sop_instance_uid, frame)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})


@router.get("/deliveries", response_model=DeliveryPage, responses=_BAD)
def deliveries(
    request: Request,
    state: Literal["pending", "sent", "failed"] | None = None,
    destination_name: ShortText | None = None,
    study_instance_uid: UidParam | None = None,
    created_from: IsoDateTime | None = None,
    created_to: IsoDateTime | None = None,
    limit: Limit = 50,
    cursor: Cursor = None,
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> DeliveryPage:
    """Deliveries of our documents to destinations, newest first, with every attempt."""
    filters = DeliveryFilters(state=state, destination_name=destination_name,
                              study_instance_uid=study_instance_uid, created_from=created_from,
                              created_to=created_to)
    items, next_cursor = list_deliveries(session, filters, limit=limit, cursor=cursor)
    audit_search(session, principal, request.url.path, "deliveries.search", filters.as_query(),
                 limit=limit, cursor=cursor, rows=len(items),
                 study_instance_uid=study_instance_uid)
    return DeliveryPage(items=items, next_cursor=next_cursor)


def audit_filters(
    actor: ShortText | None = None,
    action: ShortText | None = None,
    study_instance_uid: UidParam | None = None,
    at_from: IsoDateTime | None = None,
    at_to: IsoDateTime | None = None,
) -> AuditFilters:
    return AuditFilters(actor=actor, action=action, study_instance_uid=study_instance_uid,
                        at_from=at_from, at_to=at_to)


@router.get("/audit-events", response_model=AuditEventPage, responses=_BAD)
def audit_events(
    request: Request,
    filters: AuditFilters = Depends(audit_filters),
    limit: Limit = 50,
    cursor: Cursor = None,
    principal: Principal = Depends(require_reader),
    session: Session = Depends(get_session),
) -> AuditEventPage:
    """The audit log, newest first (reading it is recorded too)."""
    items, next_cursor = list_audit_events(session, filters, limit=limit, cursor=cursor)
    audit_search(session, principal, request.url.path, "audit.search", filters.as_query(),
                 limit=limit, cursor=cursor, rows=len(items))
    return AuditEventPage(items=items, next_cursor=next_cursor)


@router.get("/audit-events/export", response_class=StreamingResponse,
            responses=_EXPORT_RESPONSES)
def export_audit_events(
    request: Request,
    format: ExportFormatQ = "csv",
    bom: BomQ = False,
    filters: AuditFilters = Depends(audit_filters),
    principal: Principal = Depends(require_reader),
) -> StreamingResponse:
    """The audit log as CSV or JSON, streamed."""
    return stream_export(
        request.app.state.sessions, lambda s: iter_audit_events(s, filters),
        fmt=format, columns=AUDIT_EXPORT_COLUMNS, principal=principal, action="audit.export",
        query=query_text(request.url.path, filters.as_query(), format=format),
        filename_stem="audit-log", bom=bom,
    )
