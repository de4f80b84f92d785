"""The job state machine: the one writer of ``Job.state`` and of ``JobEvent`` rows.

A job is the processing of one version of a study. :data:`TRANSITIONS` is its whole life, written
as pynetdicom's ``fsm.py`` writes the PS3.8 9.2 upper-layer machine: ``(state, action) -> new
state``. :func:`transition` performs one action and records it as a ``JobEvent`` (the study
timeline) in the caller's transaction; the assembler, the outbox, the workers, the CLI and the API
all call it, so they follow the same rules.

Every transition of an existing job is one conditional ``UPDATE ... WHERE state = <the state read>``:
two processes acting on the same job at once (two workers claiming, the dispatcher requeuing while
a worker beats) cannot both win; the loser gets :class:`~workflow.states.StateChangedError`.

Administrators' rule (CLI and API alike): ``retry`` takes a ``failed``, ``dead`` or ``cancelled``
job back to ``pending`` with its attempt counter and error cleared (a cancelled job can so be
undone: nothing else would ever run it); ``cancel`` stops a job no worker holds
(``pending``, ``queued``, ``failed``, ``dead``) and keeps its last error.

A job whose results are written follows its deliveries (:func:`workflow.deliveries.settle_job`):
``sr_written`` while any is pending, ``delivery_failed`` (with the failure as its error) while any
failed for good, ``delivered`` when all are sent; cancelled deliveries do not count. Its failed
deliveries are retried or cancelled one by one (``deliveries retry|cancel``), not the job.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from common.models import Job, JobEvent, JobState, utcnow

from . import states
from .retention import check_not_pruned
from .states import RowNotFoundError

__all__ = ["JobAction", "TRANSITIONS", "RECORDED_AS", "transition", "allowed_from", "retry", "cancel",
           "JobNotFoundError"]


class JobAction(str, enum.Enum):
    """What happens to a job; each is performed only from the states :data:`TRANSITIONS` lists."""

    CREATE = "create"  #: the assembler found the study complete (a new row)
    PUBLISH = "publish"  #: the outbox gave it to the broker
    CLAIM = "claim"  #: a worker took it (or took over a running job whose lease ran out)
    INFER = "infer"  #: model runs and findings recorded
    WRITE_SR = "write_sr"  #: SRs (and presentation states) written, deliveries created
    DELIVER = "deliver"  #: every delivery sent (cancelled ones aside)
    FAIL_DELIVERY = "fail_delivery"  #: one of its deliveries failed for good (retries used up)
    RESUME_DELIVERY = "resume_delivery"  #: no delivery failed any more (retried or cancelled): the rest go on
    FAIL = "fail"  #: a transient failure; the worker retries
    FAIL_PERMANENTLY = "fail_permanently"  #: retrying cannot help (missing model, retries used up)
    REQUEUE = "requeue"  #: lost message, abandoned claim or stopped process: publish it again
    RETRY = "retry"  #: an administrator puts it back in the queue
    CANCEL = "cancel"  #: an administrator stops it
    STUDY_EMPTIED = "study_emptied"  #: every instance moved to other studies: nothing to report on
    RESUME = "resume"  #: publish an inferred job again (its worker stopped before writing the SRs)


S, A = JobState, JobAction

#: ``(state, action) -> new state``; ``None`` is "no row yet". Anything else is refused.
TRANSITIONS: dict[tuple[JobState | None, JobAction], JobState] = {
    (None, A.CREATE): S.PENDING,
    (S.PENDING, A.PUBLISH): S.QUEUED,
    # A message may reach a worker before the outbox marked the job queued, or after a failure.
    (S.PENDING, A.CLAIM): S.RUNNING,
    (S.QUEUED, A.CLAIM): S.RUNNING,
    (S.FAILED, A.CLAIM): S.RUNNING,
    (S.RUNNING, A.CLAIM): S.RUNNING,  # only when the holder's lease ran out (the caller's condition)
    (S.RUNNING, A.INFER): S.INFERRED,
    (S.INFERRED, A.WRITE_SR): S.SR_WRITTEN,
    (S.SR_WRITTEN, A.DELIVER): S.DELIVERED,
    # The job follows its deliveries (workflow.deliveries.settle_job, in the delivery's transaction).
    (S.SR_WRITTEN, A.FAIL_DELIVERY): S.DELIVERY_FAILED,
    (S.DELIVERY_FAILED, A.FAIL_DELIVERY): S.DELIVERY_FAILED,  # a second delivery failed: on the timeline
    (S.DELIVERY_FAILED, A.RESUME_DELIVERY): S.SR_WRITTEN,
    (S.DELIVERY_FAILED, A.DELIVER): S.DELIVERED,  # an administrator's retry of the failed one succeeded
    (S.PENDING, A.FAIL): S.FAILED,
    (S.QUEUED, A.FAIL): S.FAILED,
    (S.RUNNING, A.FAIL): S.FAILED,
    (S.INFERRED, A.FAIL): S.INFERRED,  # keeps its findings: the retry goes on to writing the SRs
    (S.PENDING, A.FAIL_PERMANENTLY): S.DEAD,
    (S.QUEUED, A.FAIL_PERMANENTLY): S.DEAD,
    (S.RUNNING, A.FAIL_PERMANENTLY): S.DEAD,
    (S.INFERRED, A.FAIL_PERMANENTLY): S.DEAD,
    (S.FAILED, A.FAIL_PERMANENTLY): S.DEAD,
    (S.QUEUED, A.REQUEUE): S.PENDING,
    (S.RUNNING, A.REQUEUE): S.PENDING,
    (S.FAILED, A.REQUEUE): S.PENDING,  # its retry never came (a broker that lost it), or a stop
    (S.INFERRED, A.RESUME): S.INFERRED,  # findings kept; the task goes on to writing the SRs
    (S.FAILED, A.RETRY): S.PENDING,
    (S.DEAD, A.RETRY): S.PENDING,
    (S.CANCELLED, A.RETRY): S.PENDING,
    (S.PENDING, A.CANCEL): S.CANCELLED,
    (S.QUEUED, A.CANCEL): S.CANCELLED,
    (S.FAILED, A.CANCEL): S.CANCELLED,
    (S.DEAD, A.CANCEL): S.CANCELLED,
    (S.RUNNING, A.STUDY_EMPTIED): S.CANCELLED,  # found by the worker that claimed it
}

#: What the event row records when it is not the new state: a failure after inference leaves the
#: job ``inferred`` (its findings kept) but the timeline shows that the attempt failed.
RECORDED_AS: dict[JobAction, JobState] = {A.FAIL: S.FAILED}

del S, A


class JobNotFoundError(RowNotFoundError):
    """No job has this id."""


def allowed_from(action: JobAction) -> list[JobState]:
    """The states in which ``action`` may be performed (in :class:`JobState` order)."""
    return states.allowed_from(TRANSITIONS, JobState, action)


def transition(
    session: Session,
    job: Job | int,
    action: JobAction,
    *,
    detail: str | None = None,
    now: dt.datetime | None = None,
    when: ColumnElement[bool] | None = None,
    **values: Any,
) -> JobState:
    """Perform ``action`` on ``job`` and add its ``JobEvent``; the caller commits. Returns the new state.

    ``values`` are further columns written with the state (``worker=...``, ``attempts=...``);
    ``when`` is a further condition of the conditional UPDATE (a claim of a ``running`` job needs
    its lease to have run out). For :attr:`JobAction.CREATE`, ``job`` is the new, unsaved row.

    Raises :class:`JobNotFoundError`, :class:`~workflow.states.TransitionNotAllowedError` (nothing
    written) or :class:`~workflow.states.StateChangedError` (another process changed the job first,
    or ``when`` did not hold; nothing written).
    """
    now = now or utcnow()
    stamps: dict[str, Any] = {"updated_at": now}
    if isinstance(job, Job) and action is JobAction.CREATE:
        stamps["created_at"] = job.created_at or now
    job_id, new = states.perform(session, Job, job, action, TRANSITIONS, what="job", not_found=JobNotFoundError,
                                 create=JobAction.CREATE, when=when, values={**stamps, **values})
    session.add(JobEvent(job_id=job_id, state=RECORDED_AS.get(action, new).value, at=now, detail=detail))
    return new


def retry(session: Session, job_id: int, actor: str) -> Job:
    """An administrator's retry (CLI and API): back to ``pending``, attempts and error cleared.

    Refused with :class:`~workflow.retention.ImagesPrunedError` when retention removed the
    study's images (the job could only die).
    """
    job = session.get(Job, job_id)
    if job is not None:
        check_not_pruned(session, job.study_id)
    transition(session, job_id, JobAction.RETRY, detail=f"retried by {actor}",
               attempts=0, error=None, published_at=None)
    return _loaded(session, job_id)


def cancel(session: Session, job_id: int, actor: str) -> Job:
    """An administrator's cancel (CLI and API) of a job that no worker holds."""
    transition(session, job_id, JobAction.CANCEL, detail=f"cancelled by {actor}")
    return _loaded(session, job_id)


def _loaded(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    assert job is not None  # transition() found it
    return job
