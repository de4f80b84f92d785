"""The delivery state machine: the one writer of ``Delivery.state`` and of ``DeliveryEvent`` rows.

A delivery is sending one document to one destination (C-STORE, PS3.4 B.2). Failed attempts
that leave retries are not state changes: they stay ``pending`` with a later ``next_attempt_at``
and are recorded as ``DeliveryAttempt`` rows with their DIMSE status or the exact network error
by :mod:`sender.scu`. :data:`TRANSITIONS` and :func:`transition` follow :mod:`workflow.jobs`.

Every transition also settles the delivery's job in the same transaction
(:func:`settle_job`): the job is ``delivery_failed`` while one of its deliveries is ``failed``,
``sr_written`` while any is ``pending``, ``delivered`` once all are ``sent`` (``cancelled`` ones
do not count). The job's row is locked first (:func:`lock_job_of`), so two deliveries of one job
settled at once see each other's state.

Administrators' rules (CLI, API and pages alike, :func:`retry` and :func:`cancel`):

* ``retry`` takes a ``failed`` or ``cancelled`` delivery back to ``pending``, due now, with its
  attempt counter cleared, if its destination still exists. A ``sent`` delivery is never retried
  (that would send a second copy), and a ``pending`` one is already going to be tried again.
* ``cancel`` stops a ``pending`` or ``failed`` delivery for good, with a reason.
* A removed destination's ``pending`` and ``failed`` deliveries are cancelled with the reason
  "destination <name> removed" (:func:`cancel_for_destination`) instead of being retried for ever.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import (
    Delivery,
    DeliveryEvent,
    DeliveryState,
    Destination,
    Document,
    Job,
    JobState,
    utcnow,
)

from . import jobs, states
from .states import RowNotFoundError, TransitionError

__all__ = ["DeliveryAction", "TRANSITIONS", "transition", "allowed_from", "retry", "cancel",
           "cancel_for_destination", "settle_job", "lock_job_of", "DeliveryNotFoundError",
           "DestinationMissingError", "RETRYABLE", "CANCELLABLE"]


class DeliveryAction(str, enum.Enum):
    """What happens to a delivery; each is performed only from the states :data:`TRANSITIONS` lists."""

    CREATE = "create"  #: the worker wrote a document for a destination
    SEND = "send"  #: the destination answered the C-STORE with Success or a Warning
    GIVE_UP = "give_up"  #: ``sender.retries`` attempts failed
    RETRY = "retry"  #: an administrator re-arms a failed or cancelled delivery
    CANCEL = "cancel"  #: an administrator stops it, or its destination was removed


S, A = DeliveryState, DeliveryAction

#: ``(state, action) -> new state``; ``None`` is "no row yet". Anything else is refused.
TRANSITIONS: dict[tuple[DeliveryState | None, DeliveryAction], DeliveryState] = {
    (None, A.CREATE): S.PENDING,
    (S.PENDING, A.SEND): S.SENT,
    (S.PENDING, A.GIVE_UP): S.FAILED,
    (S.FAILED, A.RETRY): S.PENDING,
    (S.CANCELLED, A.RETRY): S.PENDING,  # an administrator's cancel can be undone
    (S.PENDING, A.CANCEL): S.CANCELLED,
    (S.FAILED, A.CANCEL): S.CANCELLED,
}

del S, A


class DeliveryNotFoundError(RowNotFoundError):
    """No delivery has this id."""


class DestinationMissingError(TransitionError):
    """The delivery's destination no longer exists: retrying it could only fail (the API answers 409)."""


def allowed_from(action: DeliveryAction) -> list[DeliveryState]:
    """The states in which ``action`` may be performed (in :class:`DeliveryState` order)."""
    return states.allowed_from(TRANSITIONS, DeliveryState, action)


#: The states an administrator may retry, or cancel, a delivery from.
RETRYABLE: list[DeliveryState] = allowed_from(DeliveryAction.RETRY)
CANCELLABLE: list[DeliveryState] = allowed_from(DeliveryAction.CANCEL)


def lock_job_of(session: Session, delivery_id: int) -> int | None:
    """Lock the row of the delivery's job (``SELECT ... FOR UPDATE``; SQLite serialises writers
    anyway) and return its id, or None when there is no such delivery. Every change of a delivery
    takes this lock before the delivery's own, so changes of one job's deliveries are made one
    after the other and :func:`settle_job` reads their latest states."""
    job_id = session.scalar(
        select(Document.job_id).join(Delivery, Delivery.document_id == Document.id).where(Delivery.id == delivery_id)
    )
    if job_id is not None:
        session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    return job_id


def transition(
    session: Session,
    delivery: Delivery | int,
    action: DeliveryAction,
    *,
    detail: str | None = None,
    now: dt.datetime | None = None,
    **values: Any,
) -> DeliveryState:
    """Perform ``action`` on ``delivery``, add its ``DeliveryEvent`` and settle its job
    (:func:`settle_job`); the caller commits.

    ``values`` are further columns written with the state. For :attr:`DeliveryAction.CREATE`,
    ``delivery`` is the new, unsaved row (its job is being written: it is not settled). Raises
    :class:`DeliveryNotFoundError`, :class:`~workflow.states.TransitionNotAllowedError` or
    :class:`~workflow.states.StateChangedError`; in each case nothing is written.
    """
    now = now or utcnow()
    creating = isinstance(delivery, Delivery) and action is DeliveryAction.CREATE
    if creating:
        values = {"created_at": delivery.created_at or now, **values}  # type: ignore[union-attr]
        job_id = None
    else:
        job_id = lock_job_of(session, delivery.id if isinstance(delivery, Delivery) else int(delivery))
    delivery_id, new = states.perform(session, Delivery, delivery, action, TRANSITIONS, what="delivery",
                                      not_found=DeliveryNotFoundError, create=DeliveryAction.CREATE,
                                      when=None, values=values)
    session.add(DeliveryEvent(delivery_id=delivery_id, state=new.value, at=now, detail=detail))
    if job_id is not None:
        settle_job(session, job_id, now=now, cause=(delivery_id, action, detail))
    return new


def settle_job(session: Session, job_id: int, *, now: dt.datetime | None = None,
               cause: tuple[int, DeliveryAction, str | None] | None = None) -> JobState | None:
    """Bring a job whose results are written (``sr_written``, ``delivery_failed``) in line with
    its deliveries; returns the new state, or None when nothing changed. ``cause`` is the
    delivery change that called it (delivery id, action, detail), for the job's timeline.

    Called by :func:`transition` with the job's row locked; jobs in other states are left alone.
    """
    current = session.scalar(select(Job.state).where(Job.id == job_id))
    if current not in (JobState.SR_WRITTEN, JobState.DELIVERY_FAILED):
        return None
    rows = session.execute(
        select(Delivery.id, Delivery.state, Delivery.destination_name)
        .join(Document, Document.id == Delivery.document_id).where(Document.job_id == job_id)
    ).all()
    live = [r.state for r in rows if r.state is not DeliveryState.CANCELLED]
    delivery_id, action, detail = cause if cause is not None else (None, None, None)
    about = next((r for r in rows if r.id == delivery_id), None)
    if about is None:  # not called for one delivery's change: name the first failed one
        about = next((r for r in rows if r.state is DeliveryState.FAILED), None)
        detail = detail or (session.scalar(select(DeliveryEvent.detail).where(DeliveryEvent.delivery_id == about.id)
                                           .order_by(DeliveryEvent.id.desc())) if about is not None else None)
    what = f"delivery {about.id} to {about.destination_name}" if about is not None else "a delivery"
    job_action: jobs.JobAction | None = None
    event = ""
    values: dict[str, Any] = {}
    if DeliveryState.FAILED in live:
        if current is JobState.SR_WRITTEN or action is DeliveryAction.GIVE_UP:
            job_action = jobs.JobAction.FAIL_DELIVERY
            failed = f"{what} failed" + (f": {detail}" if detail else "")
            values["error"] = failed
            event = failed
    elif DeliveryState.PENDING in live or not live:
        if current is JobState.DELIVERY_FAILED:
            job_action = jobs.JobAction.RESUME_DELIVERY
            event = f"no delivery failed any more: {what} " + (detail or (action.value if action else "changed"))
            values["error"] = None
    else:  # every delivery that counts is sent
        job_action = jobs.JobAction.DELIVER
        event = f"{len(live)} deliveries sent" + (f", {len(rows) - len(live)} cancelled" if len(rows) > len(live) else "")
        if current is JobState.DELIVERY_FAILED:
            values["error"] = None
    if job_action is None:
        return None
    return jobs.transition(session, job_id, job_action, detail=event, now=now, **values)


def retry(session: Session, delivery_id: int, actor: str) -> Delivery:
    """An administrator's retry (CLI, API, pages): ``failed`` or ``cancelled`` -> ``pending``, due
    now, attempt counter cleared. Raises :class:`DestinationMissingError` when its destination
    was removed (it could only fail again), besides :func:`transition`'s errors."""
    found = session.get(Delivery, delivery_id)
    if found is None:
        raise DeliveryNotFoundError(f"no delivery {delivery_id}")
    if found.state in RETRYABLE and session.scalar(
            select(Destination.id).where(Destination.name == found.destination_name)) is None:
        raise DestinationMissingError(
            f"delivery {delivery_id}: destination {found.destination_name!r} no longer exists; "
            f"add it again (`dest add`) before retrying")
    now = utcnow()
    transition(session, delivery_id, DeliveryAction.RETRY, now=now, detail=f"retried by {actor}",
               attempts=0, next_attempt_at=now)
    session.refresh(found)
    return found


def cancel(session: Session, delivery_id: int, actor: str, reason: str | None = None) -> Delivery:
    """An administrator's cancel (CLI, API, pages) of a ``pending`` or ``failed`` delivery."""
    transition(session, delivery_id, DeliveryAction.CANCEL, detail=reason or f"cancelled by {actor}",
               next_attempt_at=None)
    found = session.get(Delivery, delivery_id)
    assert found is not None  # transition() found it
    return found


def cancel_for_destination(session: Session, destination_name: str) -> Sequence[int]:
    """Cancel every ``pending`` and ``failed`` delivery to a destination being removed, with the
    reason "destination <name> removed"; returns their ids (the caller commits with the removal)."""
    ids = session.scalars(
        select(Delivery.id).where(Delivery.destination_name == destination_name,
                                  Delivery.state.in_(CANCELLABLE)).order_by(Delivery.id)
    ).all()
    now = utcnow()
    for delivery_id in ids:
        transition(session, delivery_id, DeliveryAction.CANCEL, now=now,
                   detail=f"destination {destination_name} removed", next_attempt_at=None)
    return ids
