"""Administrators' actions on work in progress: retry or cancel a job, retry a delivery.

Each function changes rows in the caller's session (the caller commits, then calls
:func:`gateway.api.hooks.enqueue_delivery` for a retried delivery) and raises
:class:`ActionNotAllowedError` when the row's state does not allow the action.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.models import Delivery, DeliveryState, Job, JobEvent, JobState, utcnow

__all__ = [
    "OperationError",
    "JobNotFoundError",
    "DeliveryNotFoundError",
    "ActionNotAllowedError",
    "RETRYABLE_JOB_STATES",
    "CANCELLABLE_JOB_STATES",
    "retry_job",
    "cancel_job",
    "retry_delivery",
]

RETRYABLE_JOB_STATES = (JobState.FAILED, JobState.DEAD)
#: Jobs a worker is not holding; a RUNNING job finishes or fails first.
CANCELLABLE_JOB_STATES = (JobState.PENDING, JobState.QUEUED, JobState.FAILED, JobState.DEAD)


class OperationError(Exception):
    """An administrative action could not be carried out."""


class JobNotFoundError(OperationError, LookupError):
    pass


class DeliveryNotFoundError(OperationError, LookupError):
    pass


class ActionNotAllowedError(OperationError):
    """The row's current state does not allow the action (HTTP 409)."""


def _job(session: Session, job_id: int) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if job is None:
        raise JobNotFoundError(f"no job {job_id}")
    return job


def retry_job(session: Session, job_id: int, actor: str) -> Job:
    """FAILED/DEAD -> PENDING: the outbox publishes it again."""
    job = _job(session, job_id)
    if job.state not in RETRYABLE_JOB_STATES:
        raise ActionNotAllowedError(
            f"job {job_id} is {JobState(job.state).value}; only failed or dead jobs can be retried"
        )
    now = utcnow()
    job.state = JobState.PENDING
    job.attempts = 0
    job.published_at = None
    job.updated_at = now
    session.add(JobEvent(job_id=job.id, state=JobState.PENDING.value, at=now,
                         detail=f"retried by {actor}"))
    session.flush()
    return job


def cancel_job(session: Session, job_id: int, actor: str) -> Job:
    job = _job(session, job_id)
    if job.state not in CANCELLABLE_JOB_STATES:
        raise ActionNotAllowedError(
            f"job {job_id} is {JobState(job.state).value}; only pending, queued, failed or dead "
            "jobs can be cancelled"
        )
    now = utcnow()
    job.state = JobState.CANCELLED
    job.updated_at = now
    session.add(JobEvent(job_id=job.id, state=JobState.CANCELLED.value, at=now,
                         detail=f"cancelled by {actor}"))
    session.flush()
    return job


def retry_delivery(session: Session, delivery_id: int) -> Delivery:
    """FAILED -> PENDING with attempts 0, due now."""
    dl = session.scalar(select(Delivery).where(Delivery.id == delivery_id).with_for_update())
    if dl is None:
        raise DeliveryNotFoundError(f"no delivery {delivery_id}")
    if dl.state != DeliveryState.FAILED:
        raise ActionNotAllowedError(
            f"delivery {delivery_id} is {DeliveryState(dl.state).value}; only failed deliveries "
            "can be retried"
        )
    dl.state = DeliveryState.PENDING
    dl.attempts = 0
    dl.next_attempt_at = utcnow()
    session.flush()
    return dl
