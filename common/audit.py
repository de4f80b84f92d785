"""The audit trail: who read or changed what, written in the reader's own transaction.

:func:`record` adds an :class:`~common.models.AuditEvent` to the caller's session, so the read it
describes and the record of that read commit together (or not at all). The table is append-only:
no code path updates or deletes rows, and the migration installs triggers that refuse it.

Optionally each committed event is also sent as a DICOM audit message (PS3.15 A.5, the RFC 3881
schema as DICOM extends it) in an RFC 5424 syslog record over UDP (RFC 5426), the transport of
IHE ATNA. :func:`install_sender` connects a :class:`SyslogAuditSender` to a session factory;
messages leave only after the commit, so a rolled-back read is never reported as done.

Patient data never enters these messages: events name the study by its Study Instance UID and the
query by its parameters, which accept no patient identifiers.
"""

from __future__ import annotations

import base64
import datetime as dt
import getpass
import json
import logging
import os
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from .models import AuditEvent, utcnow
from .settings import Settings

__all__ = [
    "OUTCOMES",
    "AuditSender",
    "SyslogAuditSender",
    "record",
    "query_text",
    "operating_system_user",
    "install_sender",
    "audit_message_xml",
    "syslog_frame",
    "sender_from_settings",
]

log = logging.getLogger(__name__)

#: Values of ``AuditEvent.outcome`` and their PS3.15 EventOutcomeIndicator.
OUTCOMES = {"success": "0", "failure": "4", "denied": "4", "incomplete": "4", "error": "8"}

_PENDING_KEY = "medrega_audit_pending"


@dataclass(frozen=True)
class _Code:
    code: str
    scheme: str
    meaning: str

    def element(self, tag: str) -> ET.Element:
        return ET.Element(
            tag, {"csd-code": self.code, "codeSystemName": self.scheme, "originalText": self.meaning}
        )


# PS3.16 CID 400-403 / PS3.15 A.5.3 event identification by action prefix.
_QUERY = (_Code("110112", "DCM", "Query"), "E")
_ACCESSED = (_Code("110103", "DCM", "DICOM Instances Accessed"), "R")
#: PS3.15 A.5.3.2: instances deleted (spool retention removing a study's images).
_DELETED = (_Code("110103", "DCM", "DICOM Instances Accessed"), "D")
_EXPORT = (_Code("110106", "DCM", "Export"), "R")
_AUDIT_USED = (_Code("110101", "DCM", "Audit Log Used"), "R")
_CONFIG = (_Code("110113", "DCM", "Security Alert"), "U")
_ACTIVITY = (_Code("110100", "DCM", "Application Activity"), "E")
_AUTH = (_Code("110114", "DCM", "User Authentication"), "E")

_EVENT_TYPES: dict[str, _Code] = {
    "admin.config": _Code("110128", "DCM", "Network Configuration"),
    "auth": _Code("110122", "DCM", "Login"),
}


def _event_identity(action: str) -> tuple[_Code, str, _Code | None]:
    """(EventID, EventActionCode, EventTypeCode) for one of our action names."""
    if action.startswith("audit."):
        return (*_AUDIT_USED, None)
    if action.endswith(".export"):
        return (*_EXPORT, None)
    if action.endswith(".search") or action.endswith(".list"):
        return (*_QUERY, None)
    if action.endswith(".prune"):
        return (*_DELETED, None)
    if (action.startswith(("admin.job", "admin.delivery", "status.")) or action == "evaluation.run"
            or action.endswith(".echo")):
        return (*_ACTIVITY, None)
    if action.startswith("admin."):
        return (*_CONFIG, _EVENT_TYPES["admin.config"])
    if action.startswith("auth."):
        return (*_AUTH, _EVENT_TYPES["auth"])
    return (*_ACCESSED, None)


class AuditSender(Protocol):
    """Something that forwards committed audit events (e.g. to a syslog collector)."""

    def send(self, event: AuditEvent) -> None: ...


def query_text(path: str, filters: str | dict[str, Any] | None = None, **extra: Any) -> str:
    """Canonical JSON of what was asked or changed: path (an API path or the command line's
    command), filters (a JSON object) and extras (cursor, method, subject, error...)."""
    parsed = json.loads(filters) if isinstance(filters, str) else (filters or {})
    doc: dict[str, Any] = {"path": path}
    if parsed:
        doc["filters"] = parsed
    doc.update({k: v for k, v in extra.items() if v not in (None, "", False)})
    return json.dumps(doc, sort_keys=True, ensure_ascii=False, default=str)


def operating_system_user() -> str:
    """The login name of the process's user: the actor of a change made on the command line
    (the environment's LOGNAME/USER first, as :func:`getpass.getuser`, else the uid's name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for the uid (e.g. a container's arbitrary uid)
        return f"uid {os.getuid()}"


def record(
    session: Session,
    *,
    actor: str,
    role: str | None,
    action: str,
    query: str | None = None,
    rows: int | None = None,
    outcome: str = "success",
    study_instance_uid: str | None = None,
) -> AuditEvent:
    """Add an audit event to ``session`` (committed with the caller's transaction)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    row = AuditEvent(
        at=utcnow(),
        actor=actor[:64],
        role=role,
        action=action[:64],
        query=query,
        rows=rows,
        outcome=outcome,
        study_instance_uid=study_instance_uid,
    )
    session.add(row)
    session.info.setdefault(_PENDING_KEY, []).append(row)
    return row


def install_sender(factory: sessionmaker[Session], sender: AuditSender) -> Callable[[], None]:
    """Send every audit event committed through ``factory``'s sessions to ``sender``.

    Returns a function that disconnects the sender again.
    """

    def _after_commit(session: Session) -> None:
        pending = session.info.pop(_PENDING_KEY, [])
        for row in pending:
            try:
                sender.send(row)
            except Exception:  # never let the side channel fail a committed request
                log.exception("could not send audit event %s (%s)", row.id, row.action)

    def _after_rollback(session: Session) -> None:
        session.info.pop(_PENDING_KEY, None)

    event.listen(factory, "after_commit", _after_commit)
    event.listen(factory, "after_rollback", _after_rollback)

    def _remove() -> None:
        event.remove(factory, "after_commit", _after_commit)
        event.remove(factory, "after_rollback", _after_rollback)

    return _remove


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.timezone.utc).isoformat(timespec="microseconds")


def audit_message_xml(ev: AuditEvent, source_id: str, host: str | None = None) -> bytes:
    """One PS3.15 A.5.1 ``AuditMessage`` describing ``ev`` (UTF-8 XML)."""
    event_id, action_code, type_code = _event_identity(ev.action)
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": action_code,
            "EventDateTime": _iso(ev.at or utcnow()),
            "EventOutcomeIndicator": OUTCOMES.get(ev.outcome, "4"),
        },
    )
    ident.append(event_id.element("EventID"))
    if type_code is not None:
        ident.append(type_code.element("EventTypeCode"))

    requestor = ET.SubElement(
        root, "ActiveParticipant", {"UserID": ev.actor, "UserIsRequestor": "true"}
    )
    if ev.role:
        requestor.append(_Code(ev.role, "MEDREGA", f"gateway role {ev.role}").element("RoleIDCode"))
    app = ET.SubElement(
        root,
        "ActiveParticipant",
        {
            "UserID": source_id,
            "AlternativeUserID": str(os.getpid()),
            "UserIsRequestor": "false",
            "NetworkAccessPointID": host or socket.gethostname(),
            "NetworkAccessPointTypeCode": "1",
        },
    )
    app.append(_Code("110153", "DCM", "Source Role ID").element("RoleIDCode"))

    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    source.append(_Code("4", "DCM", "Application Server Process").element("AuditSourceTypeCode"))

    if ev.study_instance_uid:
        study = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": ev.study_instance_uid,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
            },
        )
        study.append(_Code("110180", "DCM", "Study Instance UID").element("ParticipantObjectIDTypeCode"))
    if ev.query is not None or ev.rows is not None:
        query = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": ev.action,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "24",
            },
        )
        query.append(_Code("12", "RFC-3881", "URI").element("ParticipantObjectIDTypeCode"))
        if ev.query is not None:
            ET.SubElement(query, "ParticipantObjectQuery").text = base64.b64encode(
                ev.query.encode("utf-8")
            ).decode("ascii")
        if ev.rows is not None:
            ET.SubElement(
                query,
                "ParticipantObjectDetail",
                {"type": "rows", "value": base64.b64encode(str(ev.rows).encode()).decode("ascii")},
            )
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


#: RFC 5424 PRI: facility 10 (security/authorization), severity 5 (notice).
_PRI = 10 * 8 + 5
#: IHE ITI TF-2a 3.20.4.1.2.1: MSGID of audit records in the RFC 3881 (DICOM) schema.
_MSGID = "IHE+RFC-3881"


def syslog_frame(payload: bytes, *, at: dt.datetime, host: str, app_name: str) -> bytes:
    """An RFC 5424 syslog message (no structured data) carrying ``payload``."""
    header = f"<{_PRI}>1 {_iso(at)} {host[:255] or '-'} {app_name[:48]} {os.getpid()} {_MSGID} - "
    return header.encode("ascii", "replace") + payload


class SyslogAuditSender:
    """Send audit messages to a syslog collector over UDP (RFC 5426), fire-and-forget."""

    def __init__(
        self,
        host: str,
        port: int = 514,
        *,
        source_id: str = "MEDREGA",
        app_name: str = "medrega-gateway",
    ) -> None:
        self.address = (host, port)
        self.source_id = source_id
        self.app_name = app_name
        self._hostname = socket.gethostname()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_DGRAM)

    def send(self, event: AuditEvent) -> None:
        payload = audit_message_xml(event, self.source_id, self._hostname)
        frame = syslog_frame(payload, at=event.at or utcnow(), host=self._hostname,
                             app_name=self.app_name)
        self._socket.sendto(frame, self.address)

    def close(self) -> None:
        self._socket.close()


def sender_from_settings(settings: Settings) -> SyslogAuditSender | None:
    """A syslog sender when the settings name a collector host, else None (the API's and the
    command line's audit events go to the same collector).

    Reads ``api.audit_syslog_host`` / ``api.audit_syslog_port`` / ``node.ae_title`` (the audit
    source ID, DICOM PS3.15 A.5.2); an empty host sends nothing.
    """
    if not settings.api.audit_syslog_host:
        return None
    return SyslogAuditSender(settings.api.audit_syslog_host, settings.api.audit_syslog_port,
                             source_id=settings.node.ae_title)
