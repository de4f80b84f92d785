"""The job and delivery state machines: every (state, action) pair, on a migrated database.

An allowed pair gives the table's new state and one event row; any other pair raises
TransitionNotAllowedError and writes nothing (the state and the event rows stay as they were).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select
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
from workflow import deliveries, jobs
from workflow.deliveries import DeliveryAction
from workflow.jobs import JobAction
from workflow.states import StateChangedError, TransitionNotAllowedError


@pytest.fixture
def session(sqlite_url: str) -> Iterator[Session]:
    with session_factory(sqlite_url)() as s:
        yield s


def _job(session: Session, state: JobState) -> Job:
    """A job put in ``state`` directly (test set-up; production code goes through the table)."""
    study = Study(study_instance_uid=f"1.2.826.0.1.{state.value.__hash__() & 0xFFFF}.{utcnow().timestamp()}",
                  last_received_at=utcnow())
    session.add(study)
    session.flush()
    job = Job(study_id=study.id, study_version=1, state=state, attempts=3, error="earlier")
    session.add(job)
    session.flush()
    return job


def _delivery(session: Session, state: DeliveryState) -> Delivery:
    job = _job(session, JobState.SR_WRITTEN)
    doc = Document(job_id=job.id, kind="sr", language="en", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                   sop_instance_uid=f"2.25.{job.id}", series_instance_uid=f"2.25.{job.id}.1", path="x.dcm")
    session.add(doc)
    session.flush()
    delivery = Delivery(document_id=doc.id, destination_name="pacs", state=state, attempts=4)
    session.add(delivery)
    session.flush()
    return delivery


def _job_events(session: Session, job_id: int) -> list[str]:
    return list(session.scalars(select(JobEvent.state).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


@pytest.mark.parametrize(("state", "action"), list(itertools.product(JobState, JobAction)),
                         ids=lambda v: v.value)
def test_every_job_state_and_action(session: Session, state: JobState, action: JobAction) -> None:
    job = _job(session, state)
    expected = jobs.TRANSITIONS.get((state, action))
    if expected is None:
        with pytest.raises(TransitionNotAllowedError, match=f"job {job.id} is {state.value}"):
            jobs.transition(session, job.id, action, detail="x")
        session.expire_all()
        assert session.get_one(Job, job.id).state == state
        assert _job_events(session, job.id) == []
        return
    assert jobs.transition(session, job.id, action, detail="why") == expected
    session.flush()
    session.expire_all()
    assert session.get_one(Job, job.id).state == expected
    assert _job_events(session, job.id) == [jobs.RECORDED_AS.get(action, expected).value]


def test_a_job_is_created_pending_with_its_event(session: Session) -> None:
    study = Study(study_instance_uid="1.2.3", last_received_at=utcnow())
    session.add(study)
    session.flush()
    job = Job(study_id=study.id, study_version=1)
    assert jobs.transition(session, job, JobAction.CREATE, detail="study complete") == JobState.PENDING
    assert job.id is not None and job.state == JobState.PENDING
    assert _job_events(session, job.id) == ["pending"]


def test_a_transition_loses_to_a_concurrent_change_and_writes_nothing(session: Session) -> None:
    job = _job(session, JobState.RUNNING)
    stale = utcnow().replace(year=2000)
    with pytest.raises(StateChangedError):  # the holder's lease has not run out
        jobs.transition(session, job.id, JobAction.CLAIM, when=Job.updated_at < stale, worker="w2")
    assert _job_events(session, job.id) == []
    with pytest.raises(jobs.JobNotFoundError):
        jobs.transition(session, 424242, JobAction.RETRY)


def test_administrators_retry_clears_the_counters_and_cancel_keeps_the_error(session: Session) -> None:
    cancelled = _job(session, JobState.CANCELLED)
    job = jobs.retry(session, cancelled.id, "alice")
    assert (job.state, job.attempts, job.error, job.published_at) == (JobState.PENDING, 0, None, None)
    dead = _job(session, JobState.DEAD)
    assert jobs.cancel(session, dead.id, "alice").error == "earlier"
    detail = session.scalar(select(JobEvent.detail).where(JobEvent.job_id == dead.id))
    assert detail == "cancelled by alice"


@pytest.mark.parametrize(("state", "action"), list(itertools.product(DeliveryState, DeliveryAction)),
                         ids=lambda v: v.value)
def test_every_delivery_state_and_action(session: Session, state: DeliveryState,
                                         action: DeliveryAction) -> None:
    delivery = _delivery(session, state)
    count = select(func.count()).select_from(DeliveryEvent).where(DeliveryEvent.delivery_id == delivery.id)
    expected = deliveries.TRANSITIONS.get((state, action))
    if expected is None:
        with pytest.raises(TransitionNotAllowedError, match=f"delivery {delivery.id} is {state.value}"):
            deliveries.transition(session, delivery.id, action)
        session.expire_all()
        assert session.get_one(Delivery, delivery.id).state == state
        assert session.scalar(count) == 0
        return
    assert deliveries.transition(session, delivery.id, action, detail="why") == expected
    session.flush()
    session.expire_all()
    assert session.get_one(Delivery, delivery.id).state == expected
    assert list(session.scalars(select(DeliveryEvent.state).where(DeliveryEvent.delivery_id == delivery.id))) \
        == [expected.value]


def test_a_failed_delivery_retried_is_due_now_with_no_attempts(session: Session) -> None:
    delivery = _delivery(session, DeliveryState.FAILED)
    with pytest.raises(deliveries.DestinationMissingError, match="destination 'pacs' no longer exists"):
        deliveries.retry(session, delivery.id, "alice")  # it could only fail again
    session.add(Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104))
    retried = deliveries.retry(session, delivery.id, "alice")
    assert (retried.state, retried.attempts) == (DeliveryState.PENDING, 0)
    assert retried.next_attempt_at is not None
    with pytest.raises(deliveries.DeliveryNotFoundError):
        deliveries.retry(session, 424242, "alice")
