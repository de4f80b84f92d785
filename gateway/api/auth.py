"""Who is calling: API tokens (``Authorization: Bearer``), roles, and per-request sessions.

Roles: ``admin`` changes configuration and retries work, and reads everything; ``auditor`` reads
findings, studies, deliveries and the audit log. Patient identifiers are shown to admins, and to
auditors only when ``api.auditors_see_patient_identifiers`` is set.

A request presenting an unknown or revoked token is itself recorded in the audit log
(``auth.failure``, with the client address and at most :data:`MAX_AUDITED_PATH` characters of
the path) and counted against its client address (:mod:`.throttle`): past
``api.auth_failures_allowed`` failures the address must wait, and is refused with 429 until then.
A request without a token is refused without a record. A caller whose role does not allow the
request is recorded as ``auth.forbidden``, by the API and the pages alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from common import audit
from common.settings import Settings
from ..tokens import authenticate
from .throttle import AuthFailureLimiter

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
    "record_forbidden",
    "refuse_if_throttled",
    "MAX_AUDITED_PATH",
]

#: Characters of a request path kept in an audit row (the whole length is recorded beside it).
MAX_AUDITED_PATH = 256

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


def _client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _request_summary(request: Request, **extra: str) -> str:
    """The audit ``query`` of a refused request: method, client address and a bounded path."""
    path = request.url.path
    doc: dict[str, object] = {"method": request.method, "path": path[:MAX_AUDITED_PATH],
                              "client": _client_address(request)}
    if len(path) > MAX_AUDITED_PATH:
        doc["path_length"] = len(path)
    doc.update(extra)
    return json.dumps(doc, sort_keys=True)


def _limiter(request: Request) -> AuthFailureLimiter:
    return request.app.state.auth_failures


def refuse_if_throttled(request: Request) -> None:
    """429 with ``Retry-After`` while the client address waits after failed authentications."""
    wait = _limiter(request).retry_after(_client_address(request))
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed authentications from this address; retry in {wait} s",
            headers={"Retry-After": str(wait)},
        )


def record_auth_failure(session: Session, request: Request, reason: str) -> None:
    """Audit a refused credential (committed at once: the request ends here) and count it
    against the client address."""
    _limiter(request).failed(_client_address(request))
    session.rollback()
    audit.record(
        session, actor="anonymous", role=None, action="auth.failure", outcome="denied",
        query=_request_summary(request, reason=reason),
    )
    session.commit()


def record_forbidden(session: Session, request: Request, principal: Principal) -> None:
    """Audit a request the caller's role does not allow (``auth.forbidden``, committed at once)."""
    session.rollback()
    audit.record(
        session, actor=principal.name, role=principal.role, action="auth.forbidden",
        outcome="denied", query=_request_summary(request),
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
    refuse_if_throttled(request)
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
        record_forbidden(session, request, principal)
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this action needs an admin token")
    return principal
