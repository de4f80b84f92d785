"""Spool retention: a study's received images are removed N days after its results were delivered.

The gateway is not an archive (the sending PACS keeps the originals), but its spool is what the
model reads and what the auditor's pages show, so nothing is removed before its work is done.
``storage.retention_days`` (N, 0 = keep for ever) applies to a study when all of these hold:

* it is complete (no instance arrived since its last version was decided, not ``receiving``) and
  its newest version's job is ``delivered``: the SRs reached every destination;
* no job of the study is unfinished (pending, queued, running, inferred, SR written, failed)
  and no delivery of its documents is pending or failed;
* that newest job became ``delivered`` at least N days ago.

Studies that are only stored (routed to store only or ignore: no job, nothing to deliver) are
kept. Then the files of its instances (``spool/``) and the bytes those instances replaced
(``replaced/``, :class:`~common.models.InstanceReplacement`) are removed; the rows stay, marked
``pruned_at`` (and the study ``images_pruned_at``), so the pages and the API say "images removed
by retention on <date>" and a re-run refuses with that reason (:class:`ImagesPrunedError`).
Sending the study again files the images again (:mod:`dicom_node.ingest` files an identical
re-send of a pruned instance and marks the study changed), which makes a new version.
Quarantined objects follow their own setting, ``storage.quarantine_retention_days``.

The study is claimed by a conditional UPDATE (its state and ``last_received_at`` as read) before
any file is removed, so an instance arriving meanwhile keeps the study; the files go before that
transaction commits, while its locks hold off a re-send that would replace one of them. ``serve``'s dispatcher runs :func:`prune_spool` hourly; ``medrega-gateway spool prune``
runs it on demand (``--dry-run`` lists only).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import exists, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, aliased

from common.models import (
    Delivery,
    DeliveryState,
    Document,
    Instance,
    InstanceReplacement,
    Job,
    JobEvent,
    JobState,
    QuarantinedInstance,
    Study,
    StudyState,
    utcnow,
)

from .states import ActionRefusedError

__all__ = [
    "ImagesPrunedError",
    "PrunedStudy",
    "PruneReport",
    "prune_spool",
    "spool_bytes",
    "pruned_message",
    "check_not_pruned",
]

log = logging.getLogger(__name__)

#: Job states in which a study's images may still be read (the job may run or be retried by itself).
_UNFINISHED = (JobState.PENDING, JobState.QUEUED, JobState.RUNNING, JobState.INFERRED,
               JobState.SR_WRITTEN, JobState.FAILED)


class ImagesPrunedError(ActionRefusedError):
    """The study's images were removed by spool retention: it cannot be processed again."""


def pruned_message(study_instance_uid: str, pruned_at: dt.datetime) -> str:
    """The one sentence every surface gives for a study whose images were removed."""
    return (f"the images of study {study_instance_uid} were removed by retention on "
            f"{pruned_at:%Y-%m-%d %H:%M} UTC (storage.retention_days); to process it again the "
            "study must be sent again")


def check_not_pruned(session: Session, study_id: int) -> None:
    """Raise :class:`ImagesPrunedError` when any instance file of the study was removed."""
    row = session.execute(
        select(Study.study_instance_uid, func.max(Instance.pruned_at))
        .join(Instance, Instance.study_id == Study.id)
        .where(Study.id == study_id, Instance.pruned_at.is_not(None))
        .group_by(Study.study_instance_uid)
    ).first()
    if row is not None and row[1] is not None:
        raise ImagesPrunedError(pruned_message(row[0], row[1]))


@dataclass
class PrunedStudy:
    study_instance_uid: str
    delivered_at: dt.datetime
    files: int = 0
    bytes: int = 0


@dataclass
class PruneReport:
    """What a pass removed (or, dry, would remove): studies, files and bytes actually on disk."""

    dry_run: bool
    retention_days: int
    studies: list[PrunedStudy] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    quarantine_files: int = 0
    quarantine_bytes: int = 0

    @property
    def removed_anything(self) -> bool:
        return bool(self.files or self.quarantine_files or self.studies)


def _eligible(session: Session, retention_days: int, now: dt.datetime) -> list[tuple[int, str, dt.datetime, dt.datetime]]:
    """(study id, UID, last_received_at, delivered_at) of the studies whose images may go now."""
    newest = (select(Job.study_id, func.max(Job.study_version).label("version"))
              .group_by(Job.study_id).subquery())
    delivered_at = (select(func.max(JobEvent.at)).where(JobEvent.job_id == Job.id,
                                                       JobEvent.state == JobState.DELIVERED.value)
                    .correlate(Job).scalar_subquery())
    any_job = aliased(Job)  # every job of the study, not the newest one joined below
    unfinished = exists().where(any_job.study_id == Study.id, any_job.state.in_(_UNFINISHED))
    undelivered = exists().where(Delivery.document_id == Document.id, Document.job_id == any_job.id,
                                 any_job.study_id == Study.id,
                                 Delivery.state.in_((DeliveryState.PENDING, DeliveryState.FAILED)))
    on_disk = exists().where(Instance.study_id == Study.id, Instance.pruned_at.is_(None))
    rows = session.execute(
        select(Study.id, Study.study_instance_uid, Study.last_received_at, delivered_at)
        .join(newest, newest.c.study_id == Study.id)
        .join(Job, (Job.study_id == Study.id) & (Job.study_version == newest.c.version))
        .where(Study.state == StudyState.COMPLETE, Job.state == JobState.DELIVERED,
               ~unfinished, ~undelivered, on_disk)
        .order_by(Study.id)
    ).all()
    cutoff = now - dt.timedelta(days=retention_days)
    return [(sid, uid, last, at) for sid, uid, last, at in rows if at is not None and at <= cutoff]


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None


def _remove(data_dir: Path, relpath: str) -> int | None:
    """Remove ``data_dir/relpath`` and its emptied folders below the top one; the bytes freed."""
    path = data_dir / relpath
    size = _size(path)
    if size is None:
        return None
    path.unlink(missing_ok=True)
    parent, top = path.parent, data_dir / Path(relpath).parts[0]
    while parent != top and parent.is_relative_to(top):
        try:
            parent.rmdir()
        except OSError:  # not empty (another series, a file arriving): keep it
            break
        parent = parent.parent
    return size


def _study_files(session: Session, study_id: int) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    instances = session.execute(select(Instance.id, Instance.path)
                                .where(Instance.study_id == study_id, Instance.pruned_at.is_(None))).all()
    kept = session.execute(
        select(InstanceReplacement.id, InstanceReplacement.kept_path)
        .where((InstanceReplacement.study_id == study_id) | (InstanceReplacement.previous_study_id == study_id),
               InstanceReplacement.kept_path.is_not(None), InstanceReplacement.pruned_at.is_(None))
    ).all()
    return [(i, p) for i, p in instances], [(i, p) for i, p in kept if p]


def prune_spool(
    session: Session,
    data_dir: Path,
    retention_days: int,
    quarantine_retention_days: int = 0,
    *,
    dry_run: bool = False,
    now: dt.datetime | None = None,
) -> PruneReport:
    """Remove the spooled files retention allows (see the module's docstring); commits per study.

    With ``dry_run`` nothing is written or removed; the report lists what would be.
    """
    now = now or utcnow()
    report = PruneReport(dry_run=dry_run, retention_days=retention_days)
    if retention_days > 0:
        for study_id, uid, last_received_at, delivered_at in _eligible(session, retention_days, now):
            instances, kept = _study_files(session, study_id)
            entry = PrunedStudy(uid, delivered_at)
            if dry_run:
                sizes = [_size(data_dir / p) for _, p in instances + kept]
                entry.files = sum(1 for s in sizes if s is not None)
                entry.bytes = sum(s for s in sizes if s is not None)
            else:
                claimed = cast(CursorResult[Any], session.execute(
                    update(Study)
                    .where(Study.id == study_id, Study.state == StudyState.COMPLETE,
                           Study.last_received_at == last_received_at)
                    .values(images_pruned_at=now)
                    .execution_options(synchronize_session=False)
                )).rowcount
                if not claimed:  # an instance arrived meanwhile: the study is kept
                    session.rollback()
                    continue
                session.execute(update(Instance).where(Instance.id.in_([i for i, _ in instances]))
                                .values(pruned_at=now).execution_options(synchronize_session=False))
                if kept:
                    session.execute(update(InstanceReplacement)
                                    .where(InstanceReplacement.id.in_([i for i, _ in kept]))
                                    .values(pruned_at=now).execution_options(synchronize_session=False))
                # The files go while the claim is held (SQLite's write lock, PostgreSQL's row
                # locks), so a re-send replacing one of them waits for the commit; a crash before
                # the commit leaves the rows unmarked and the next pass finishes the study.
                for _, relpath in instances + kept:
                    freed = _remove(data_dir, relpath)
                    if freed is not None:
                        entry.files += 1
                        entry.bytes += freed
                session.commit()
                log.info("retention: removed %d files (%d bytes) of study %s, delivered %s",
                         entry.files, entry.bytes, uid, delivered_at.isoformat(timespec="seconds"))
            report.studies.append(entry)
            report.files += entry.files
            report.bytes += entry.bytes
    if quarantine_retention_days > 0:
        cutoff = now - dt.timedelta(days=quarantine_retention_days)
        rows = session.execute(select(QuarantinedInstance.id, QuarantinedInstance.path)
                               .where(QuarantinedInstance.received_at <= cutoff,
                                      QuarantinedInstance.pruned_at.is_(None))).all()
        for row_id, relpath in rows:
            if dry_run:
                freed = _size(data_dir / relpath)
            else:
                session.execute(update(QuarantinedInstance).where(QuarantinedInstance.id == row_id)
                                .values(pruned_at=now).execution_options(synchronize_session=False))
                freed = _remove(data_dir, relpath)
                session.commit()
            if freed is not None:
                report.quarantine_files += 1
                report.quarantine_bytes += freed
    return report


def spool_bytes(session: Session) -> dict[str, int]:
    """Bytes held in the data folder by area (``spool``, ``replaced``), from the rows: cheap
    enough for every metrics scrape (one aggregate per area, no walk over the files)."""
    instances = session.scalar(select(func.coalesce(func.sum(Instance.size_bytes), 0))
                               .where(Instance.pruned_at.is_(None)))
    replaced = session.scalar(select(func.coalesce(func.sum(InstanceReplacement.previous_size_bytes), 0))
                              .where(InstanceReplacement.kept_path.is_not(None),
                                     InstanceReplacement.pruned_at.is_(None)))
    return {"spool": int(instances or 0), "replaced": int(replaced or 0)}
