"""Recording API reads and changes in the audit log (thin layer over :mod:`common.audit`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from common import audit
from common.audit import query_text
from common.models import AuditEvent
from .auth import Principal

__all__ = ["query_text", "audit_request", "audit_search"]


def audit_request(
    session: Session,
    principal: Principal,
    action: str,
    query: str,
    *,
    rows: int | None = None,
    outcome: str = "success",
    study_instance_uid: str | None = None,
) -> AuditEvent:
    """Add the event to the request's transaction (the endpoint commits read and event together)."""
    return audit.record(session, actor=principal.name, role=principal.role, action=action,
                        query=query, rows=rows, outcome=outcome,
                        study_instance_uid=study_instance_uid)


def audit_search(
    session: Session,
    principal: Principal,
    path: str,
    action: str,
    filters: str | dict[str, Any] | None,
    *,
    limit: int,
    cursor: str | None,
    rows: int,
    study_instance_uid: str | None = None,
) -> None:
    """Record a search that read one page (its filters, page size, whether it went on from a
    cursor, and how many rows it gave) and commit it together with the read."""
    audit_request(session, principal, action,
                  query_text(path, filters, limit=limit, cursor=bool(cursor)), rows=rows,
                  study_instance_uid=study_instance_uid)
    session.commit()
