"""A job follows its deliveries (issue 17): ``delivery_failed`` while one failed for good, back to
``sr_written`` when an administrator retries or cancels it, ``delivered`` once the rest are sent;
a removed destination's deliveries are cancelled with the reason. On a migrated database, through
workflow.deliveries (what the sender, the CLI and the API call)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db import session_factory
from common.models import (
    Delivery,
    DeliveryEvent,
    DeliveryState,
    Destination,
    Document,
    Job,
    JobEvent,
    JobState,
    Study,
    utcnow,
)
from gateway import admin
from workflow import deliveries
from workflow.deliveries import DeliveryAction
from workflow.states import TransitionNotAllowedError


@pytest.fixture
def session(sqlite_url: str) -> Iterator[Session]:
    with session_factory(sqlite_url)() as s:
        yield s


def _job_with_deliveries(session: Session, *destinations: str) -> tuple[int, list[int]]:
    """An ``sr_written`` job with one SR and one pending delivery per destination."""
    study = Study(study_instance_uid=f"1.2.826.0.1.{utcnow().timestamp()}", last_received_at=utcnow())
    session.add(study)
    session.flush()
    job = Job(study_id=study.id, study_version=1, state=JobState.SR_WRITTEN)
    session.add(job)
    session.flush()
    doc = Document(job_id=job.id, kind="sr", language="en", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                   sop_instance_uid=f"2.25.{job.id}", series_instance_uid=f"2.25.{job.id}.1", path="x.dcm")
    session.add(doc)
    session.flush()
    ids = []
    for name in destinations:
        if session.scalar(select(Destination).where(Destination.name == name)) is None:
            session.add(Destination(name=name, ae_title=name.upper(), host="127.0.0.1", port=104))
        delivery = Delivery(document_id=doc.id, destination_name=name)
        deliveries.transition(session, delivery, DeliveryAction.CREATE)
        ids.append(delivery.id)
    session.commit()
    return job.id, ids


def _job(session: Session, job_id: int) -> Job:
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    return job


def _job_events(session: Session, job_id: int) -> list[tuple[str, str | None]]:
    return [(e.state, e.detail) for e in session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]


def test_a_job_follows_its_deliveries_through_failure_and_retry(session: Session) -> None:
    job_id, (to_pacs, to_archive) = _job_with_deliveries(session, "pacs", "archive")
    deliveries.transition(session, to_archive, DeliveryAction.SEND)
    assert _job(session, job_id).state is JobState.SR_WRITTEN  # one still pending

    deliveries.transition(session, to_pacs, DeliveryAction.GIVE_UP,
                          detail="21 attempts, last: connection refused (ECONNREFUSED) to 127.0.0.1:104")
    job = _job(session, job_id)
    assert job.state is JobState.DELIVERY_FAILED
    assert job.error == (f"delivery {to_pacs} to pacs failed: 21 attempts, last: connection refused "
                         f"(ECONNREFUSED) to 127.0.0.1:104")

    deliveries.retry(session, to_pacs, "alice")
    job = _job(session, job_id)
    assert (job.state, job.error) == (JobState.SR_WRITTEN, None)

    deliveries.transition(session, to_pacs, DeliveryAction.SEND)
    assert _job(session, job_id).state is JobState.DELIVERED
    assert [state for state, _ in _job_events(session, job_id)] == ["delivery_failed", "sr_written", "delivered"]
    assert _job_events(session, job_id)[-1][1] == "2 deliveries sent"


def test_a_second_failure_is_on_the_timeline_and_a_retry_of_one_keeps_the_job_failed(session: Session) -> None:
    job_id, (a, b) = _job_with_deliveries(session, "pacs", "archive")
    deliveries.transition(session, a, DeliveryAction.GIVE_UP, detail="first")
    deliveries.transition(session, b, DeliveryAction.GIVE_UP, detail="second")
    assert [state for state, _ in _job_events(session, job_id)] == ["delivery_failed", "delivery_failed"]
    assert _job(session, job_id).error == f"delivery {b} to archive failed: second"
    deliveries.retry(session, a, "alice")
    assert _job(session, job_id).state is JobState.DELIVERY_FAILED  # b is still failed
    deliveries.transition(session, a, DeliveryAction.SEND)
    assert _job(session, job_id).state is JobState.DELIVERY_FAILED
    deliveries.retry(session, b, "alice")
    deliveries.transition(session, b, DeliveryAction.SEND)
    assert _job(session, job_id).state is JobState.DELIVERED


def test_a_cancelled_delivery_does_not_count(session: Session) -> None:
    job_id, (a, b) = _job_with_deliveries(session, "pacs", "archive")
    deliveries.transition(session, a, DeliveryAction.GIVE_UP, detail="refused")
    deliveries.cancel(session, a, "alice")
    assert _job(session, job_id).state is JobState.SR_WRITTEN  # b still pending
    deliveries.transition(session, b, DeliveryAction.SEND)
    assert _job(session, job_id).state is JobState.DELIVERED
    assert _job_events(session, job_id)[-1] == ("delivered", "1 deliveries sent, 1 cancelled")
    detail = session.scalar(select(DeliveryEvent.detail).where(DeliveryEvent.delivery_id == a)
                            .order_by(DeliveryEvent.id.desc()))
    assert detail == "cancelled by alice"
    with pytest.raises(TransitionNotAllowedError, match="cancel is allowed only from pending, failed"):
        deliveries.cancel(session, b, "alice")  # sent: nothing to cancel


def test_removing_a_destination_cancels_its_unsent_deliveries_with_the_reason(session: Session) -> None:
    job_id, (to_pacs, to_archive) = _job_with_deliveries(session, "pacs", "archive")
    other_job, (other,) = _job_with_deliveries(session, "pacs")
    deliveries.transition(session, other, DeliveryAction.GIVE_UP, detail="refused")
    assert _job(session, other_job).state is JobState.DELIVERY_FAILED

    assert list(admin.remove_destination(session, "pacs")) == [to_pacs, other]
    session.commit()
    for delivery_id in (to_pacs, other):
        assert session.get_one(Delivery, delivery_id).state is DeliveryState.CANCELLED
        assert session.scalar(select(DeliveryEvent.detail).where(DeliveryEvent.delivery_id == delivery_id)
                              .order_by(DeliveryEvent.id.desc())) == "destination pacs removed"
    assert session.get_one(Delivery, to_archive).state is DeliveryState.PENDING
    assert _job(session, other_job).state is JobState.SR_WRITTEN  # nothing left to deliver
    assert _job(session, job_id).state is JobState.SR_WRITTEN
    with pytest.raises(deliveries.DestinationMissingError):
        deliveries.retry(session, to_pacs, "alice")


@pytest.mark.postgres
def test_two_deliveries_of_a_job_sent_at_once_on_postgresql(postgres_url: str) -> None:
    """Each delivery's transaction locks the job's row first: the second one to commit sees the
    first one sent, so the job always ends ``delivered`` (without the lock both could read the
    other still pending, and the job would stay ``sr_written``)."""
    import threading

    from common.db import session_scope, upgrade

    upgrade(postgres_url)
    jobs = []
    with session_factory(postgres_url)() as s:
        for _ in range(10):
            jobs.append(_job_with_deliveries(s, "pacs", "archive"))
    for job_id, pair in jobs:
        barrier = threading.Barrier(2)

        def send(delivery_id: int, barrier: threading.Barrier = barrier) -> None:
            with session_scope(postgres_url) as s:
                barrier.wait()
                deliveries.transition(s, delivery_id, DeliveryAction.SEND)

        threads = [threading.Thread(target=send, args=(d,)) for d in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with session_factory(postgres_url)() as s:
            assert _job(s, job_id).state is JobState.DELIVERED


def test_jobs_left_waiting_are_settled_by_the_outbox(session: Session) -> None:
    """A job left ``sr_written`` with a delivery failed for good (a gateway before issue 17) or all
    sent (a process stopped between the two writes) is settled by the dispatcher's pass."""
    from workflow.outbox import finish_delivered_jobs

    failed_job, (failed,) = _job_with_deliveries(session, "pacs")
    sent_job, (sent, cancelled) = _job_with_deliveries(session, "pacs", "archive")
    waiting_job, _ = _job_with_deliveries(session, "pacs")
    for delivery_id, state in ((failed, DeliveryState.FAILED), (sent, DeliveryState.SENT),
                               (cancelled, DeliveryState.CANCELLED)):
        session.get_one(Delivery, delivery_id).state = state  # as an older gateway left them
    session.add(DeliveryEvent(delivery_id=failed, state="failed", at=utcnow(), detail="21 attempts, last: refused"))
    session.commit()
    assert finish_delivered_jobs(session) == 2
    assert finish_delivered_jobs(session) == 0
    job = _job(session, failed_job)
    assert (job.state, job.error) == (JobState.DELIVERY_FAILED,
                                      f"delivery {failed} to pacs failed: 21 attempts, last: refused")
    assert _job(session, sent_job).state is JobState.DELIVERED
    assert _job(session, waiting_job).state is JobState.SR_WRITTEN
