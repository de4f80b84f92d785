"""Publishing recorded work to the broker (the transactional outbox).

Jobs and deliveries are rows first; this module publishes the ones that are due. If the broker is
down, publishing fails, the rows stay as they are and the next pass tries again: a broker outage
delays work, it never loses it. Publishing twice is harmless because the tasks are idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from gateway.models import Delivery, DeliveryState, Job, JobEvent, JobState, utcnow

__all__ = ["publish_pending_jobs", "publish_due_deliveries", "requeue_orphaned_jobs", "DELIVERY_LEASE_S"]

log = logging.getLogger(__name__)

#: A published delivery is not published again for this long (its task is in flight).
DELIVERY_LEASE_S = 300.0


def publish_pending_jobs(session: Session, publish: Callable[[Job], None]) -> int:
    """Publish every ``pending`` job, urgent ones first; commit after each one."""
    jobs = session.scalars(
        select(Job).where(Job.state == JobState.PENDING).order_by(Job.priority, Job.id)
    ).all()
    published = 0
    for job in jobs:
        publish(job)  # raises when the broker is unreachable: the job stays pending
        now = utcnow()
        job.state, job.published_at, job.updated_at = JobState.QUEUED, now, now
        session.add(JobEvent(job_id=job.id, state=JobState.QUEUED.value, at=now))
        session.commit()
        published += 1
    return published


def publish_due_deliveries(session: Session, publish: Callable[[Delivery], None]) -> int:
    """Publish pending deliveries whose next attempt is due, leasing each for a while."""
    now = utcnow()
    due = session.scalars(
        select(Delivery)
        .where(Delivery.state == DeliveryState.PENDING,
               or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
        .order_by(Delivery.id)
    ).all()
    for delivery in due:
        publish(delivery)
        delivery.next_attempt_at = utcnow() + dt.timedelta(seconds=DELIVERY_LEASE_S)
        session.commit()
    return len(due)


def requeue_orphaned_jobs(session: Session) -> int:
    """Embedded mode, at start-up: jobs left ``queued``/``running`` by a stopped process.

    The embedded broker has no redelivery of unacknowledged messages, and in embedded mode no
    other process can be running them, so they go back to ``pending`` and are published again.
    """
    jobs = session.scalars(select(Job).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING]))).all()
    now = utcnow()
    for job in jobs:
        job.state, job.updated_at = JobState.PENDING, now
        session.add(JobEvent(job_id=job.id, state=JobState.PENDING.value, at=now,
                             detail="requeued at start-up (previous process stopped)"))
    session.commit()
    return len(jobs)
