"""Who is calling: API tokens (``Authorization: Bearer``), roles, and per-request sessions.

Roles: ``admin`` changes configuration and retries work, and reads everything; ``auditor`` reads
findings, studies, deliveries and the audit log. Patient identifiers are shown to admins, and to
auditors only when ``api.auditors_see_patient_identifiers`` is set.

A request presenting an unknown or revoked token is itself recorded in the audit log
(``auth.failure``); a request without a token is refused without a record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from .. import audit
from ..settings import Settings
from ..tokens import authenticate

__all__ = [
    "Principal",
    "bearer_scheme",
    "get_session",
    "get_settings",
    "principal_for_token",
    "current_principal",
    "require_reader",
    "require_admin",
    "record_auth_failure",
]

READER_ROLES = ("admin", "auditor")

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiToken",
    description="An API token from `medrega-gateway token create --role admin|auditor --name NAME`.",
)


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    name: str
    role: str
    sees_patient_identifiers: bool

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; endpoints commit explicitly (with their audit event)."""
    factory: sessionmaker[Session] = request.app.state.sessions
    session = factory()
    try:
        yield session
    finally:
        session.close()


def principal_for_token(session: Session, settings: Settings, token: str | None) -> Principal | None:
    row = authenticate(session, token)
    if row is None:
        return None
    sees = row.role == "admin" or settings.api.auditors_see_patient_identifiers
    return Principal(name=row.name, role=row.role, sees_patient_identifiers=sees)


def record_auth_failure(session: Session, request: Request, reason: str) -> None:
    """Audit a refused credential (committed at once: the request ends here)."""
    session.rollback()
    audit.record(
        session, actor="anonymous", role=None, action="auth.failure", outcome="denied",
        query=json.dumps({"path": request.url.path, "reason": reason}),
    )
    session.commit()


def current_principal(
    request: Request,
    session: Session = Depends(get_session),
    credentials: HTTPAuthorizationCredentials | None = Security(bearer_scheme),
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "an API token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = principal_for_token(session, get_settings(request), credentials.credentials)
    if principal is None:
        record_auth_failure(session, request, "invalid or revoked token")
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid or revoked API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def require_reader(principal: Principal = Depends(current_principal)) -> Principal:
    if principal.role not in READER_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token may not read findings")
    return principal


def require_admin(
    request: Request,
    principal: Principal = Depends(current_principal),
    session: Session = Depends(get_session),
) -> Principal:
    """Only admins; a refused attempt is recorded (``auth.forbidden``) with the caller's name."""
    if not principal.is_admin:
        session.rollback()
        audit.record(
            session, actor=principal.name, role=principal.role, action="auth.forbidden",
            outcome="denied",
            query=json.dumps({"method": request.method, "path": request.url.path}),
        )
        session.commit()
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this action needs an admin token")
    return principal
