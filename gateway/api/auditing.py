"""Recording API reads and changes in the audit log (thin layer over :mod:`common.audit`)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from common import audit
from common.audit import query_text
from common.models import AuditEvent
from .auth import Principal

__all__ = ["query_text", "audit_request"]


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
