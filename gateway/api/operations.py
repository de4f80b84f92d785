"""Administrators' actions on work in progress: retry or cancel a job, retry a delivery.

The rules are the state machines' (:mod:`workflow.jobs`, :mod:`workflow.deliveries`), so the API,
the pages and the CLI allow the same actions. Each function changes rows in the caller's session
(the caller commits, then calls :func:`gateway.api.hooks.enqueue_delivery` for a retried
delivery) and raises :class:`ActionNotAllowedError` when the row's state does not allow the action,
or when a rule of the work refuses it (a study whose images retention removed cannot be re-run).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from common.models import Delivery, Job
from workflow import deliveries, jobs
from workflow.deliveries import DeliveryNotFoundError, DestinationMissingError
from workflow.jobs import JobNotFoundError
from workflow.states import ActionRefusedError as ActionNotAllowedError

__all__ = [
    "JobNotFoundError",
    "DeliveryNotFoundError",
    "DestinationMissingError",
    "ActionNotAllowedError",
    "retry_job",
    "cancel_job",
    "retry_delivery",
    "cancel_delivery",
]


def retry_job(session: Session, job_id: int, actor: str) -> Job:
    """``failed``/``dead``/``cancelled`` -> ``pending``: the outbox publishes it again."""
    return jobs.retry(session, job_id, actor)


def cancel_job(session: Session, job_id: int, actor: str) -> Job:
    """Cancel a job that no worker holds."""
    return jobs.cancel(session, job_id, actor)


def retry_delivery(session: Session, delivery_id: int, actor: str) -> Delivery:
    """``failed`` or ``cancelled`` -> ``pending`` with attempts 0, due now (its destination must exist)."""
    return deliveries.retry(session, delivery_id, actor)


def cancel_delivery(session: Session, delivery_id: int, actor: str) -> Delivery:
    """``pending`` or ``failed`` -> ``cancelled``."""
    return deliveries.cancel(session, delivery_id, actor)
