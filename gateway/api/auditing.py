"""Recording API reads and changes in the audit log (thin layer over :mod:`common.audit`)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from common import audit
from common.models import AuditEvent
from .auth import Principal

__all__ = ["query_text", "audit_request"]


def query_text(path: str, filters: str | dict[str, Any] | None = None, **extra: Any) -> str:
    """Canonical JSON of what was asked: path, filters (a JSON object) and extras (e.g. cursor)."""
    parsed = json.loads(filters) if isinstance(filters, str) else (filters or {})
    doc: dict[str, Any] = {"path": path}
    if parsed:
        doc["filters"] = parsed
    doc.update({k: v for k, v in extra.items() if v not in (None, "", False)})
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


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
