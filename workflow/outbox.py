"""Publishing recorded work to the broker (the transactional outbox).

Jobs and deliveries are rows first; this module publishes the ones that are due. If the broker is
down, publishing fails, the rows stay as they are and the next pass tries again: a broker outage
delays work, it never loses it. Publishing twice is harmless because the tasks are idempotent.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from common.models import Delivery, DeliveryState, Document, Job, JobState, utcnow

from .jobs import JobAction, transition
from .states import TransitionError

__all__ = [
    "DELIVERY_LEASE_S",
    "RecentlyPublished",
    "finish_delivered_jobs",
    "publish_due_deliveries",
    "publish_pending_jobs",
    "recover_orphaned_work",
    "requeue_abandoned_jobs",
    "requeue_failed_jobs",
    "requeue_lost_messages",
    "resume_inferred_jobs",
]

log = logging.getLogger(__name__)

#: A published delivery whose task never ran (lost with its worker) is published again after this.
DELIVERY_LEASE_S = 300.0


def publish_pending_jobs(session: Session, publish: Callable[[Job], None]) -> int:
    """Publish every ``pending`` job, urgent ones first; commit after each one."""
    jobs = session.scalars(
        select(Job).where(Job.state == JobState.PENDING).order_by(Job.priority, Job.id)
    ).all()
    published = 0
    for job in jobs:
        job_id = job.id
        publish(job)  # raises when the broker is unreachable: the job stays pending
        now = utcnow()
        try:
            transition(session, job, JobAction.PUBLISH, now=now, published_at=now)
        except TransitionError as exc:
            # A worker claimed the message before this write (pending -> running is allowed):
            # its claim stands, the job is past ``queued`` and needs nothing more from the outbox.
            session.rollback()
            log.debug("job %s moved on before it was marked queued: %s", job_id, exc)
        else:
            session.commit()
        published += 1
    return published


#: delivery id -> (its ``next_attempt_at`` when published, monotonic time of publishing)
RecentlyPublished = dict[int, tuple[dt.datetime | None, float]]


def publish_due_deliveries(session: Session, publish: Callable[[Delivery], None],
                           recently_published: RecentlyPublished | None = None) -> int:
    """Publish pending deliveries whose next attempt is due.

    The sender claims a delivery itself (it moves ``next_attempt_at`` forward while it sends), so
    publishing the same delivery twice is harmless; ``recently_published`` (delivery id ->
    (its next_attempt_at, monotonic time of publishing)) keeps one dispatcher from flooding the
    queue while a task waits to run: a delivery is published again when the sender has recorded
    an attempt since (``next_attempt_at`` changed), or when the lease ran out (a lost task).
    """
    import time

    now = utcnow()
    due = session.scalars(
        select(Delivery)
        .where(Delivery.state == DeliveryState.PENDING,
               or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
        .order_by(Delivery.id)
    ).all()
    published = 0
    clock = time.monotonic()
    for delivery in due:
        if recently_published is not None:
            seen = recently_published.get(delivery.id)
            if seen is not None and seen[0] == delivery.next_attempt_at and clock - seen[1] < DELIVERY_LEASE_S:
                continue
            recently_published[delivery.id] = (delivery.next_attempt_at, clock)
        publish(delivery)
        published += 1
    if recently_published is not None:
        for key in [k for k, (_, t) in recently_published.items() if clock - t >= DELIVERY_LEASE_S]:
            del recently_published[key]
    return published


def recover_orphaned_work(session: Session, publish: Callable[[Job], None]) -> int:
    """Embedded mode, at start-up: every job and delivery a stopped process left unfinished.

    The embedded broker has no redelivery of unacknowledged messages (nor of a task's retry
    waiting for its countdown), and in embedded mode no other process can be working, so every
    lease has run out:

    - ``queued``, ``running`` and ``failed`` (waiting for its retry) jobs go back to ``pending``
      and are published again by the dispatcher;
    - ``inferred`` jobs keep their findings and are published again (:func:`resume_inferred_jobs`);
    - ``sr_written`` jobs whose deliveries were all sent become ``delivered``, those with a
      delivery failed for good ``delivery_failed`` (:func:`finish_delivered_jobs`);
    - a pending delivery claimed by the stopped process (``next_attempt_at`` moved forward while
      it sent) is due again at once (one waiting for its backoff too: an attempt earlier, never a
      second copy, since a delivery is recorded ``sent`` as soon as the destination answered).

    Returns the number of jobs and deliveries recovered.
    """
    now = utcnow()
    jobs = session.scalars(select(Job).where(
        Job.state.in_([JobState.QUEUED, JobState.RUNNING, JobState.FAILED]))).all()
    for job in jobs:
        transition(session, job, JobAction.REQUEUE, now=now,
                   detail="requeued at start-up (previous process stopped)")
    claimed = cast(CursorResult[Any], session.execute(
        update(Delivery)
        .where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at > now)
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    )).rowcount
    session.commit()
    recovered = len(jobs) + claimed
    recovered += resume_inferred_jobs(session, publish, older_than_s=0.0)
    recovered += finish_delivered_jobs(session)
    return recovered


def resume_inferred_jobs(session: Session, publish: Callable[[Job], None], older_than_s: float) -> int:
    """``inferred`` jobs with no activity for ``older_than_s``: publish their task again.

    A worker stopped between recording the findings and writing the SRs (or while the task waited
    for its retry) leaves the job ``inferred``; the task published again goes straight to writing
    the SRs from the recorded findings (:func:`workers.tasks.run_job`). ``updated_at`` is moved
    forward with one conditional UPDATE first, so the job is published once per lease.
    """
    now = utcnow()
    stale = now - dt.timedelta(seconds=older_than_s)
    candidates = session.scalars(select(Job.id).where(Job.state == JobState.INFERRED, Job.updated_at <= stale)).all()
    resumed = 0
    for job_id in candidates:
        try:
            transition(session, job_id, JobAction.RESUME, now=now, when=Job.updated_at <= stale,
                       detail="published again: results not written (worker stopped)")
        except TransitionError:
            continue
        job = session.get(Job, job_id)
        assert job is not None
        publish(job)  # raises when the broker is unreachable: rolled back, tried next pass
        session.commit()
        log.warning("job %s: inferred, results not written; published again", job_id)
        resumed += 1
    return resumed


def finish_delivered_jobs(session: Session) -> int:
    """``sr_written`` jobs whose deliveries are all done: settled as their deliveries say
    (:func:`workflow.deliveries.settle_job`): ``delivered`` when all are sent (cancelled ones
    aside), ``delivery_failed`` when one failed for good.

    A delivery's transition settles its job itself; this finds the jobs that a stopped process, or
    a gateway before issue 17 (a failed delivery left its job ``sr_written`` for good), left
    waiting for nothing. A job without deliveries (no destination) stays ``sr_written``.
    """
    from sqlalchemy import exists

    from .deliveries import settle_job

    # Correlated on the job (an IN (SELECT documents.id FROM documents, jobs ...) subquery was not:
    # one pending delivery of any job kept every job from being finished).
    of_job = (Document.job_id == Job.id, Delivery.document_id == Document.id)
    has_delivery = exists().where(*of_job, Delivery.state != DeliveryState.CANCELLED)
    unsent = exists().where(*of_job, Delivery.state == DeliveryState.PENDING)
    job_ids = session.scalars(select(Job.id).where(Job.state == JobState.SR_WRITTEN, has_delivery, ~unsent)).all()
    now = utcnow()
    finished = 0
    for job_id in job_ids:
        session.execute(select(Job.id).where(Job.id == job_id).with_for_update())
        try:
            if settle_job(session, job_id, now=now) is not None:
                finished += 1
        except TransitionError:
            session.rollback()
            continue
        session.commit()
    return finished


def requeue_failed_jobs(session: Session, older_than_s: float) -> int:
    """``failed`` jobs whose retry never came within ``older_than_s``: back to ``pending``.

    A failed job waits for its task's retry (a message with a countdown); a broker that lost it
    (Redis restarted without persistence) would leave the job ``failed`` for good.
    """
    return _requeue(session, JobState.FAILED, Job.updated_at, older_than_s,
                    lambda _: f"requeued: the retry did not come within {older_than_s:.0f} s")


def requeue_abandoned_jobs(session: Session, lease_s: float) -> int:
    """``running`` jobs whose heartbeat is older than ``lease_s``: their worker is gone; back to ``pending``.

    A worker killed in the middle of inference leaves its job ``running``. The broker delivers the
    task again (after ``queue.visibility_timeout_s``), but when that copy reaches a worker while the
    dead worker's last heartbeat is still younger than the lease, the claim fails and the copy is
    acknowledged: without this nothing would ever run the job again. The test is the claim's own
    (``updated_at`` older than the lease, see :func:`workers.tasks._claim`), made with a conditional
    UPDATE so a worker that beats at this moment keeps its job; the job is then published again
    and the claim still gives it to one worker only.
    """
    return _requeue(session, JobState.RUNNING, Job.updated_at, lease_s,
                    lambda worker: f"requeued: no heartbeat from worker {worker} for {lease_s:.0f} s")


def requeue_lost_messages(session: Session, older_than_s: float) -> int:
    """``queued`` jobs published longer ago than ``older_than_s`` and never claimed: publish again.

    A broker that lost its data (Redis restarted without persistence) loses the messages of
    jobs already published; their rows stay ``queued``. A copy published again is harmless if the
    first one still exists: the claim gives the job to one worker, the other copy is skipped.
    """
    return _requeue(session, JobState.QUEUED, Job.published_at, older_than_s,
                    lambda _: f"published again: not picked up within {older_than_s:.0f} s")


def _requeue(session: Session, state: JobState, column: InstrumentedAttribute[Any], older_than_s: float,
             why: Callable[[str | None], str]) -> int:
    """Move ``state`` jobs whose ``column`` is older than ``older_than_s`` back to ``pending``,
    each with one conditional UPDATE (a worker that claims or beats at this moment wins)."""
    now = utcnow()
    stale = now - dt.timedelta(seconds=older_than_s)
    candidates = session.execute(select(Job.id, Job.worker).where(Job.state == state, column < stale)).all()
    requeued = 0
    for job_id, worker in candidates:
        detail = why(worker)
        try:
            transition(session, job_id, JobAction.REQUEUE, now=now, detail=detail,
                       when=(Job.state == state) & (column < stale))
        except TransitionError:
            continue  # a worker claimed it or beat at this moment: it keeps the job
        log.warning("job %s %s", job_id, detail)
        requeued += 1
    session.commit()
    return requeued
