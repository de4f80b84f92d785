"""Study completeness: when a study has been quiet for ``node.stable_after_s``, create its job.

There is no DICOM message that says "the study is complete" for C-STORE (PS3.4 Annex B), so a
study is taken as complete when none of its instances has arrived for the configured time, or
when an administrator says so (``medrega-gateway study process UID``).

The job row is created in the same transaction that marks the study complete (the *outbox*):
publishing it to the broker happens afterwards (:mod:`workflow.outbox`), so a broker outage delays
work but never loses it. Instances that arrive after a study was processed put it back to
``receiving``; when it is stable again a new *version* is made, whose SRs reference the previous
ones (Predecessor Documents Sequence). So does an instance replaced by other content under its
SOP Instance UID (``Study.instances_changed``, set by :mod:`dicom_node.ingest`), in the study it
is in now and in the study it left; a study left without instances makes no job.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, func, select, update
from sqlalchemy.orm import Session

from common.logs import log_context
from common.models import Instance, Job, Study, StudyState, utcnow

from .jobs import JobAction, transition
from .retention import check_not_pruned

__all__ = ["StudyNotFoundError", "stable_studies", "complete_study", "complete_stable_studies"]


log = logging.getLogger(__name__)


class StudyNotFoundError(LookupError):
    """No study with that Study Instance UID was received."""


def stable_studies(session: Session, stable_after_s: float, now: dt.datetime | None = None) -> Sequence[Study]:
    """Studies still ``receiving`` whose last instance arrived at least ``stable_after_s`` ago."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=stable_after_s)
    return session.scalars(
        select(Study)
        .where(Study.state == StudyState.RECEIVING, Study.last_received_at <= cutoff)
        .order_by(Study.last_received_at)
        .with_for_update(skip_locked=True)
    ).all()


def complete_study(session: Session, study: Study, force: bool = False) -> Job | None:
    """Mark ``study`` complete and create the job for its next version (same transaction).

    Lines logged meanwhile carry the study's ``study_instance_uid`` (and the new ``job_id``).

    Returns the new job, or ``None`` when routing says the study is only stored or ignored, when
    nothing arrived or changed since the last version (unless ``force``), when the study has no
    instances (all moved to other studies), or when an instance arrived while we decided (the
    study is receiving again; a later pass completes it).

    The study row is changed with one conditional UPDATE on the ``last_received_at`` we read, so
    an instance recorded by the node in the meantime is never folded into a version that was
    already decided without it.
    """
    with log_context(study_instance_uid=study.study_instance_uid):
        return _complete_study(session, study, force)


def _complete_study(session: Session, study: Study, force: bool) -> Job | None:
    from .routing import decide

    now = utcnow()
    seen = study.last_received_at
    decision = decide(session, study)
    instance_count = session.scalar(select(func.count(Instance.id)).where(Instance.study_id == study.id)) or 0
    last_job = session.scalar(select(Job).where(Job.study_id == study.id).order_by(Job.study_version.desc()))
    process = decision.action == "process" and instance_count > 0 and (
        force or last_job is None or last_job.instance_count != instance_count
        or study.instances_changed
    )
    values: dict[str, object] = {"completed_at": now, "instances_changed": False}
    if decision.action != "process":
        values["state"] = StudyState.STORED
    else:
        values["state"] = StudyState.COMPLETE
    if process:
        values.update(version=Study.version + 1, urgent=decision.urgent)
    claimed = cast(CursorResult[Any], session.execute(
        update(Study)
        .where(Study.id == study.id, Study.last_received_at == seen)
        .values(**values)
        .execution_options(synchronize_session=False)
    )).rowcount
    session.expire(study)
    if claimed != 1 or not process:
        return None
    job = Job(
        study_id=study.id,
        study_version=study.version,
        priority=0 if decision.urgent else 5,
        instance_count=instance_count,
        destinations=list(decision.destinations),
    )
    detail = f"route {decision.route_name}" if decision.route_name else "default route"
    transition(session, job, JobAction.CREATE, now=now,
               detail=f"study complete ({instance_count} instances, {detail})")
    with log_context(job_id=job.id):
        log.info("study complete: version %d, %d instances, %s; job %d created", job.study_version,
                 instance_count, detail, job.id)
    return job


def complete_stable_studies(session: Session, stable_after_s: float) -> list[Job]:
    """One pass of the assembler: complete every stable study. The caller commits."""
    jobs = []
    for study in stable_studies(session, stable_after_s):
        job = complete_study(session, study)
        if job is not None:
            jobs.append(job)
    return jobs


def process_now(session: Session, study_instance_uid: str) -> Job | None:
    """``medrega-gateway study process UID``: complete the study now, even if not yet stable."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        raise StudyNotFoundError(f"no study {study_instance_uid} has been received")
    check_not_pruned(session, study.id)  # ImagesPrunedError: nothing left for the model to read
    return complete_study(session, study, force=True)
