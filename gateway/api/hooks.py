"""Hooks the rest of the gateway connects to the API's actions.

``enqueue_delivery(delivery_id)`` is called after an administrator's retry of a failed delivery
has been committed (the delivery is PENDING again, attempts 0, due now). By default it does
nothing: the sender picks up due PENDING deliveries on its own schedule. The worker package
connects it to Celery so the retry starts at once::

    from gateway.api import hooks
    hooks.set_enqueue_delivery(lambda delivery_id: send_delivery.delay(delivery_id))

Retried jobs need no hook: they become PENDING and the outbox publishes PENDING jobs.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["enqueue_delivery", "set_enqueue_delivery", "EnqueueDelivery"]

EnqueueDelivery = Callable[[int], None]


def _noop(delivery_id: int) -> None:
    """Default: nothing (the sender's own schedule finds the due delivery)."""


_enqueue_delivery: EnqueueDelivery = _noop


def set_enqueue_delivery(fn: EnqueueDelivery | None) -> EnqueueDelivery:
    """Connect ``fn`` (None restores the no-op); returns the previous hook."""
    global _enqueue_delivery
    previous = _enqueue_delivery
    _enqueue_delivery = fn if fn is not None else _noop
    return previous


def enqueue_delivery(delivery_id: int) -> None:
    """Ask for an immediate attempt of ``delivery_id`` (after the retry is committed)."""
    _enqueue_delivery(delivery_id)
