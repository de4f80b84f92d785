"""Sending our documents (SR, GSPS) to destinations: C-STORE SCU (PS3.4 B, PS3.7 9.1.1).

:func:`deliver` makes one attempt for one :class:`~common.models.Delivery` and records it:

* A delivery already SENT returns at once: a document is never sent twice by us. Before the
  attempt the delivery is *claimed* with a conditional update of ``next_attempt_at`` (a lease as
  long as the association timeouts), so two workers given the same delivery cannot both send it.
* The association proposes the document's SOP class and, for SR, the simpler SR classes it can be
  rewritten as (Comprehensive 3D SR -> Comprehensive SR -> Enhanced SR -> Basic Text SR). When the
  destination accepts only a simpler one, :func:`sr_writer.fallback.fallback_document` rewrites the
  document and ``Delivery.sent_sop_class_uid`` records what was sent.
* Every attempt leaves a :class:`~common.models.DeliveryAttempt` with the DIMSE status
  (PS3.7 C.4.2.1.5) or the network error. Success and every Warning
  (:func:`common.dimse_status.is_stored`) mean SENT. Anything else is retried after an exponential backoff
  (``sender.backoff_initial_s`` x 2^(attempts-1), at most ``sender.backoff_max_s``) and marked
  FAILED after ``sender.retries`` retries; an administrator re-arms it with
  :func:`workflow.deliveries.retry`. State changes are made by :mod:`workflow.deliveries`.

The calling AE title is ``sender.calling_ae_title`` or, when empty, ``node.ae_title``.

A failed attempt records what exactly happened: the socket error of the TCP connect with its
errno ("connection refused (ECONNREFUSED) to 10.0.0.5:104"), the connect or ACSE timeout, the
A-ASSOCIATE-RJ's result, source and reason (PS3.8 9.3.4), or the C-STORE status with its meaning
("C-STORE status 0xA700 Refused: Out of Resources"). pynetdicom only logs the connect error; a
filter on its loggers (:class:`_OwnAssociations`) takes the exception from the sender's own
associations and keeps their lines out of the log, since the sender logs each failure itself,
summarised per destination (:class:`common.logs.RepeatedFailures`).
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import socket
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification
from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session

from common.db import session_scope
from common.dimse_status import describe_store_status, is_stored
from common.logs import RepeatedFailures, log_context
from common.holds import hold_point
from common.models import Delivery, DeliveryAttempt, DeliveryState, Destination, Document, Job, Study, utcnow
from common.retries import delivery_backoff_s
from common.settings import Settings
from common.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

from dicom_node.tls import client_context
from workflow.deliveries import DeliveryAction, DeliveryNotFoundError, lock_job_of, transition

__all__ = [
    "SenderError",
    "DestinationNotFoundError",
    "AssociationFailedError",
    "DeliveryResult",
    "backoff_s",
    "deliver",
    "echo",
]

LOGGER = logging.getLogger(__name__)

class SenderError(RuntimeError):
    """Sending could not be attempted or did not succeed."""


class DestinationNotFoundError(SenderError, LookupError):
    pass


class AssociationFailedError(SenderError):
    """No association with the destination: connection refused/timed out, rejected or aborted.

    ``reason`` is what happened, without the destination's name (the attempt's record);
    ``kind`` a short key of the failure ("ECONNREFUSED", "timeout", "rejected", ...)."""

    def __init__(self, destination: str, reason: str, kind: str) -> None:
        super().__init__(f"{destination}: {reason}")
        self.reason, self.kind = reason, kind


@dataclass(frozen=True)
class DeliveryResult:
    state: DeliveryState
    status: int | None
    error: str | None
    retry_in_s: float | None
    sop_class_uid: str | None


@dataclass(frozen=True)
class _Target:
    name: str
    ae_title: str
    host: str
    port: int
    tls: bool


@dataclass(frozen=True)
class _Outcome:
    status: int | None
    error: str | None
    sop_class_uid: str | None
    #: a short key of the failure, for summarising repeated ones ("ECONNREFUSED", "0xA700", ...)
    kind: str = "error"

    @property
    def ok(self) -> bool:
        return is_stored(self.status)


def backoff_s(settings: Settings, attempts: int) -> float:
    """Delay after the ``attempts``-th failed attempt (1-based): exponential, capped (the policy:
    :func:`common.retries.delivery_backoff_s`)."""
    return delivery_backoff_s(settings.sender.backoff_initial_s, settings.sender.backoff_max_s, attempts)


def _lease_s(settings: Settings) -> float:
    n = settings.node
    return n.acse_timeout_s + n.dimse_timeout_s + n.network_timeout_s + 30.0


def _calling_ae_title(settings: Settings) -> str:
    return settings.sender.calling_ae_title or settings.node.ae_title


#: The AEs the sender made; pynetdicom's records from their associations go to :class:`_OwnAssociations`.
_SENDER_AES: "weakref.WeakSet[AE]" = weakref.WeakSet()
#: The exception of a sender association's failed TCP connect (or TLS handshake), by association.
_CONNECT_ERRORS: "weakref.WeakKeyDictionary[Association, OSError]" = weakref.WeakKeyDictionary()
#: ``requesting`` is set while this thread negotiates a sender association (pynetdicom's ACSE
#: runs in the caller's thread, its DUL in a thread of its own).
_LOCAL = threading.local()


def _association_of(thread: threading.Thread) -> Association | None:
    if isinstance(thread, Association):
        return thread
    if isinstance(thread, DULServiceProvider):
        return thread.assoc
    return None


class _OwnAssociations(logging.Filter):
    """On pynetdicom's loggers: a record written in the thread of one of the sender's associations
    is dropped, and the socket error being handled when it was written (pynetdicom logs the
    ``OSError`` of a failed connect and does not raise it) is kept for :func:`_describe_failure`.
    Records of the node's own (acceptor) associations pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_LOCAL, "requesting", False):
            return False
        assoc = _association_of(threading.current_thread())
        if assoc is None or assoc.ae not in _SENDER_AES:
            return True
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError) and assoc not in _CONNECT_ERRORS:
            _CONNECT_ERRORS[assoc] = exc
        return False


_OWN_ASSOCIATIONS = _OwnAssociations()
for _name in ("pynetdicom.transport", "pynetdicom.acse", "pynetdicom.association", "pynetdicom.dul",
              "pynetdicom.fsm"):
    logging.getLogger(_name).addFilter(_OWN_ASSOCIATIONS)


def _make_ae(settings: Settings) -> AE:
    ae = AE(ae_title=_calling_ae_title(settings))
    _SENDER_AES.add(ae)
    # the gateway's own identity (PS3.7 D.3.3.2), as the node's Storage SCP announces it
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.acse_timeout = settings.node.acse_timeout_s
    ae.dimse_timeout = settings.node.dimse_timeout_s
    ae.network_timeout = settings.node.network_timeout_s
    ae.connection_timeout = min(settings.node.network_timeout_s, 30.0)
    ae.maximum_pdu_size = settings.node.maximum_pdu_size
    return ae


def _socket_error(exc: OSError, where: str, host: str, connect_timeout: float | None) -> tuple[str, str]:
    """(description, kind) of the exception of a failed TCP connect or TLS handshake."""
    if isinstance(exc, ssl.SSLError):
        why = getattr(exc, "verify_message", None) or exc.reason or str(exc)
        return f"TLS handshake with {where} failed: {why}", "tls"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host name {host!r}: {exc.strerror or exc}", "dns"
    if isinstance(exc, TimeoutError) and exc.errno in (None, errno.ETIMEDOUT):
        after = f" after {connect_timeout:g} s" if connect_timeout else ""
        return f"connection to {where} timed out{after}", "timeout"
    if exc.errno is not None:
        name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
        text = (exc.strerror or name).lower()
        return f"{text} ({name}) to {where}", name
    return f"connection to {where} failed: {type(exc).__name__}: {exc}", type(exc).__name__


def _describe_failure(assoc: Association, target: _Target, ae: AE, connected: bool,
                      elapsed_s: float) -> tuple[str, str]:
    """(description, kind) of an association that was not established (PS3.8 7.1, 9.3.4)."""
    where = f"{target.host}:{target.port}"
    exc = _CONNECT_ERRORS.pop(assoc, None)
    if exc is not None:
        return _socket_error(exc, where, target.host, ae.connection_timeout)
    if assoc.is_rejected:
        rsp = assoc.acceptor.primitive
        if rsp is not None:
            return (f"association rejected by {target.ae_title}@{where}: {rsp.reason_str} "
                    f"({rsp.result_str}, source {rsp.source_str})"), "rejected"
        return f"association rejected by {target.ae_title}@{where}", "rejected"
    if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
        refused = ", ".join(sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts}))
        return f"destination accepts none of the SOP classes proposed ({refused})", "no-context"
    if not connected:
        return f"no connection to {where} (the reason was not reported)", "connect"
    if assoc.acceptor.primitive is None and ae.acse_timeout and elapsed_s >= ae.acse_timeout - 0.5:
        return (f"{target.ae_title}@{where} did not answer the association request within "
                f"{ae.acse_timeout:g} s (ACSE timeout)"), "acse-timeout"
    return f"{target.ae_title}@{where} closed the connection or aborted before accepting the association", "aborted"


def _associate(settings: Settings, target: _Target, ae: AE) -> Association:
    # server_hostname None: no SNI and no host name check (client_context). pynetdicom annotates it
    # str, but passes it to ssl.SSLContext.wrap_socket, which takes None.
    tls_args = (client_context(settings.node), None) if target.tls else None
    connected: list[bool] = []
    started = time.monotonic()
    _LOCAL.requesting = True
    try:
        assoc = ae.associate(
            target.host, target.port, ae_title=target.ae_title,
            tls_args=tls_args,  # type: ignore[arg-type]  # server_hostname None is valid, see above
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.append(True))],
        )
    finally:
        _LOCAL.requesting = False
    if not assoc.is_established:
        reason, kind = _describe_failure(assoc, target, ae, bool(connected), time.monotonic() - started)
        raise AssociationFailedError(f"{target.name} ({target.ae_title}@{target.host}:{target.port})",
                                     reason, kind)
    _CONNECT_ERRORS.pop(assoc, None)
    return assoc


def echo(settings: Settings, destination_name: str) -> int:
    """C-ECHO a destination (PS3.4 A); returns the DIMSE status (0x0000 is success).

    Raises :class:`DestinationNotFoundError` or :class:`AssociationFailedError`.
    """
    with session_scope(settings.database_url) as session:
        target = _target(session, destination_name)
    if target is None:
        raise DestinationNotFoundError(f"no destination named {destination_name!r}")
    ae = _make_ae(settings)
    ae.add_requested_context(Verification)
    assoc = _associate(settings, target, ae)
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    status = rsp.get("Status") if rsp is not None else None
    if status is None:
        raise AssociationFailedError(destination_name, "no C-ECHO response (DIMSE timeout or abort)", "dimse")
    return int(status)


def _target(session: Session, name: str) -> _Target | None:
    row = session.scalar(select(Destination).where(Destination.name == name))
    if row is None:
        return None
    return _Target(row.name, row.ae_title, row.host, int(row.port), bool(row.tls))


def _proposed_classes(sop_class_uid: str) -> list[str]:
    """The document's own class, then (an SR) each poorer SR class it can be rewritten as."""
    from sr_writer.fallback import SR_CLASSES_BY_PREFERENCE  # highdicom: imported when sending

    if sop_class_uid in SR_CLASSES_BY_PREFERENCE:
        return list(SR_CLASSES_BY_PREFERENCE[SR_CLASSES_BY_PREFERENCE.index(sop_class_uid):])
    return [sop_class_uid]


def _choose_dataset(ds: Dataset, accepted: Sequence[str]) -> tuple[Dataset | None, str | None]:
    """The data set to send given the SOP classes the destination accepted, or (None, why)."""
    own = str(ds.SOPClassUID)
    if own in accepted:
        return ds, None
    candidates = [uid for uid in _proposed_classes(own)[1:] if uid in accepted]
    if not candidates:
        return None, f"destination accepts none of the SOP classes proposed for {own}"
    from sr_writer.errors import SRWriterError
    from sr_writer.fallback import fallback_document

    try:
        return fallback_document(ds, candidates), None
    except SRWriterError as exc:  # the writer cannot: the attempt fails with why (a bug still raises)
        return None, f"fallback to {candidates[0]} failed: {type(exc).__name__}: {exc}"


def _send(settings: Settings, target: _Target, path: Path) -> _Outcome:
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        return _Outcome(None, f"cannot read document {path.name}: {exc}", None, "document")
    own = str(ds.SOPClassUID)
    file_ts = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
    syntaxes = list(dict.fromkeys([file_ts, ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    ae = _make_ae(settings)
    for uid in _proposed_classes(own):
        ae.add_requested_context(uid, syntaxes)
    try:
        assoc = _associate(settings, target, ae)
    except AssociationFailedError as exc:
        return _Outcome(None, exc.reason, None, exc.kind)
    except OSError as exc:  # TLS or socket errors raised before pynetdicom handles them
        reason, kind = _socket_error(exc, f"{target.host}:{target.port}", target.host, ae.connection_timeout)
        return _Outcome(None, reason, None, kind)
    try:
        accepted = [str(cx.abstract_syntax) for cx in assoc.accepted_contexts]
        to_send, why = _choose_dataset(ds, accepted)
        if to_send is None:
            return _Outcome(None, why, None, "no-context")
        sent_class = str(to_send.SOPClassUID)
        rsp = assoc.send_c_store(to_send)
        status = rsp.get("Status") if rsp is not None else None
        if status is None:
            why = ("no C-STORE response within the DIMSE timeout "
                   f"({ae.dimse_timeout:g} s) or the association was aborted" if ae.dimse_timeout
                   else "no C-STORE response: the association was aborted")
            return _Outcome(None, why, sent_class, "dimse")
        comment = rsp.get("ErrorComment")
        error = None if status == 0x0000 else describe_store_status(int(status), comment)
        return _Outcome(int(status), error, sent_class, f"0x{int(status):04X}")
    except Exception as exc:
        return _Outcome(None, f"C-STORE failed: {type(exc).__name__}: {exc}", None, type(exc).__name__)
    finally:
        if assoc.is_established:
            assoc.release()


#: Failures per destination, logged once per kind and then summarised (one per process).
FAILURES = RepeatedFailures(LOGGER, window_s=60.0)


def deliver(settings: Settings, delivery_id: int) -> DeliveryResult:
    """Make one attempt to send a delivery's document to its destination, and record it.

    Every line logged meanwhile carries ``delivery_id``, ``job_id`` and ``study_instance_uid``."""
    with log_context(delivery_id=delivery_id):
        return _deliver(settings, delivery_id)


def _deliver(settings: Settings, delivery_id: int) -> DeliveryResult:
    url = settings.database_url
    now = utcnow()
    with session_scope(url) as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise DeliveryNotFoundError(f"no delivery {delivery_id}")
        job_id, study_uid = session.execute(
            select(Job.id, Study.study_instance_uid).join(Document, Document.job_id == Job.id)
            .join(Study, Study.id == Job.study_id).where(Document.id == delivery.document_id)
        ).one()
    with log_context(job_id=job_id, study_instance_uid=study_uid):
        return _attempt(settings, delivery_id, now)


def _attempt(settings: Settings, delivery_id: int, now: dt.datetime) -> DeliveryResult:
    url = settings.database_url
    with session_scope(url) as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery is not None  # deliveries are never deleted
        if delivery.state is DeliveryState.SENT:
            return DeliveryResult(DeliveryState.SENT, None, None, None, delivery.sent_sop_class_uid)
        if delivery.state is DeliveryState.FAILED:
            return DeliveryResult(
                DeliveryState.FAILED, None, "retry limit reached (an administrator may retry it)", None, None
            )
        if delivery.state is DeliveryState.CANCELLED:
            return DeliveryResult(DeliveryState.CANCELLED, None, "cancelled", None, None)
        due = delivery.next_attempt_at
        if due is not None and due > now:
            return DeliveryResult(
                DeliveryState.PENDING, None, "not due yet (or being sent by another worker)",
                (due - now).total_seconds(), None,
            )
        claimed = cast(CursorResult[Any], session.execute(
            update(Delivery)
            .where(
                Delivery.id == delivery_id,
                Delivery.state == DeliveryState.PENDING,
                or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now),
            )
            .values(next_attempt_at=now + dt.timedelta(seconds=_lease_s(settings)))
            .execution_options(synchronize_session=False)
        )).rowcount
        if claimed != 1:
            return DeliveryResult(
                DeliveryState.PENDING, None, "being sent by another worker", _lease_s(settings), None
            )
        document = session.get(Document, delivery.document_id)
        target = _target(session, delivery.destination_name)
        destination_enabled = session.scalar(
            select(Destination.enabled).where(Destination.name == delivery.destination_name)
        )
        doc_path = settings.data_dir / document.path if document is not None else None

    hold_point("delivery.sending")
    if document is None or doc_path is None:
        outcome = _Outcome(None, f"document {delivery.document_id} does not exist", None, "document")
    elif target is None:
        outcome = _Outcome(None, f"destination {delivery.destination_name!r} is not configured", None,
                           "not-configured")
    elif not destination_enabled:
        outcome = _Outcome(None, f"destination {delivery.destination_name!r} is disabled", None, "disabled")
    else:
        outcome = _send(settings, target, doc_path)
    return _record(settings, delivery_id, outcome)


def _record(settings: Settings, delivery_id: int, outcome: _Outcome) -> DeliveryResult:
    now = utcnow()
    with session_scope(settings.database_url) as session:
        lock_job_of(session, delivery_id)  # the job first: the order every delivery change takes
        delivery = session.get(Delivery, delivery_id, with_for_update=True)
        assert delivery is not None
        session.add(
            DeliveryAttempt(
                delivery_id=delivery_id, at=now, status=outcome.status, error=outcome.error,
                sop_class_uid=outcome.sop_class_uid,
            )
        )
        delivery.attempts = (delivery.attempts or 0) + 1
        name = delivery.destination_name
        if delivery.state is not DeliveryState.PENDING:
            # Cancelled (its destination removed) while this attempt was being made.
            LOGGER.warning("delivery %d to %s became %s during the attempt (%s); left so", delivery_id, name,
                           delivery.state.value,
                           "the destination stored it" if outcome.ok else outcome.error)
            return DeliveryResult(delivery.state, outcome.status, outcome.error, None, outcome.sop_class_uid)
        if outcome.ok:
            transition(session, delivery, DeliveryAction.SEND, now=now,
                       detail=f"{name}: status 0x{outcome.status or 0:04X}",
                       delivered_at=now, next_attempt_at=None, sent_sop_class_uid=outcome.sop_class_uid)
            LOGGER.info("delivery %d sent to %s (status 0x%04X)", delivery_id, name, outcome.status)
            FAILURES.succeeded(name, f"delivery {delivery_id} sent")
            return DeliveryResult(DeliveryState.SENT, outcome.status, outcome.error, None, outcome.sop_class_uid)
        error = outcome.error or f"status 0x{outcome.status or 0:04X}"
        if delivery.attempts > settings.sender.retries:
            transition(session, delivery, DeliveryAction.GIVE_UP, now=now,
                       detail=f"{delivery.attempts} attempts, last: {error}", next_attempt_at=None)
            FAILURES.failed(name, f"gave up: {outcome.kind}",
                            f"delivery {delivery_id} to {name} FAILED after {delivery.attempts} attempts: {error}",
                            what="deliveries failed for good")
            return DeliveryResult(DeliveryState.FAILED, outcome.status, outcome.error, None, outcome.sop_class_uid)
        delay = backoff_s(settings, delivery.attempts)
        delivery.next_attempt_at = now + dt.timedelta(seconds=delay)
        FAILURES.failed(name, outcome.kind, f"delivery {delivery_id} to {name} attempt {delivery.attempts} "
                                            f"failed, next in {delay:g} s: {error}")
        return DeliveryResult(DeliveryState.PENDING, outcome.status, outcome.error, delay, outcome.sop_class_uid)
