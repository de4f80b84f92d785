"""The delivery state machine: the one writer of ``Delivery.state`` and of ``DeliveryEvent`` rows.

A delivery is sending one document to one destination (C-STORE, PS3.4 B.2). Failed attempts
that leave retries are not state changes: they stay ``pending`` with a later ``next_attempt_at``
and are recorded as ``DeliveryAttempt`` rows with their DIMSE status by :mod:`sender.scu`.
:data:`TRANSITIONS` and :func:`transition` follow :mod:`workflow.jobs`.

Administrators' rule (CLI, API and pages alike): ``retry`` takes a ``failed`` delivery back to
``pending``, due now, with its attempt counter cleared. A ``sent`` delivery is never retried
(that would send a second copy), and a ``pending`` one is already going to be tried again.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy.orm import Session

from common.models import Delivery, DeliveryEvent, DeliveryState, utcnow

from . import states
from .states import RowNotFoundError

__all__ = ["DeliveryAction", "TRANSITIONS", "transition", "allowed_from", "retry", "DeliveryNotFoundError"]


class DeliveryAction(str, enum.Enum):
    """What happens to a delivery; each is performed only from the states :data:`TRANSITIONS` lists."""

    CREATE = "create"  #: the worker wrote a document for a destination
    SEND = "send"  #: the destination answered the C-STORE with Success or a Warning
    GIVE_UP = "give_up"  #: ``sender.retries`` attempts failed
    RETRY = "retry"  #: an administrator re-arms a failed delivery


S, A = DeliveryState, DeliveryAction

#: ``(state, action) -> new state``; ``None`` is "no row yet". Anything else is refused.
TRANSITIONS: dict[tuple[DeliveryState | None, DeliveryAction], DeliveryState] = {
    (None, A.CREATE): S.PENDING,
    (S.PENDING, A.SEND): S.SENT,
    (S.PENDING, A.GIVE_UP): S.FAILED,
    (S.FAILED, A.RETRY): S.PENDING,
}

del S, A


class DeliveryNotFoundError(RowNotFoundError):
    """No delivery has this id."""


def allowed_from(action: DeliveryAction) -> list[DeliveryState]:
    """The states in which ``action`` may be performed (in :class:`DeliveryState` order)."""
    return states.allowed_from(TRANSITIONS, DeliveryState, action)


def transition(
    session: Session,
    delivery: Delivery | int,
    action: DeliveryAction,
    *,
    detail: str | None = None,
    now: dt.datetime | None = None,
    **values: Any,
) -> DeliveryState:
    """Perform ``action`` on ``delivery`` and add its ``DeliveryEvent``; the caller commits.

    ``values`` are further columns written with the state. For :attr:`DeliveryAction.CREATE`,
    ``delivery`` is the new, unsaved row. Raises :class:`DeliveryNotFoundError`,
    :class:`~workflow.states.TransitionNotAllowedError` or
    :class:`~workflow.states.StateChangedError`; in each case nothing is written.
    """
    now = now or utcnow()
    if isinstance(delivery, Delivery) and action is DeliveryAction.CREATE:
        values = {"created_at": delivery.created_at or now, **values}
    delivery_id, new = states.perform(session, Delivery, delivery, action, TRANSITIONS, what="delivery",
                                      not_found=DeliveryNotFoundError, create=DeliveryAction.CREATE,
                                      when=None, values=values)
    session.add(DeliveryEvent(delivery_id=delivery_id, state=new.value, at=now, detail=detail))
    return new


def retry(session: Session, delivery_id: int, actor: str) -> Delivery:
    """An administrator's retry: ``failed`` -> ``pending``, due now, attempt counter cleared."""
    now = utcnow()
    transition(session, delivery_id, DeliveryAction.RETRY, now=now, detail=f"retried by {actor}",
               attempts=0, next_attempt_at=now)
    found = session.get(Delivery, delivery_id)
    assert found is not None  # transition() found it
    return found
