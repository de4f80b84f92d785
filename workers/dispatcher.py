"""The dispatcher loop that ``serve`` runs beside the DICOM node.

Each pass: complete the studies that became stable (creating their jobs in the same transaction),
put running jobs whose worker stopped beating (a killed worker), queued jobs whose message was
lost and failed jobs whose retry never came back to pending, mark delivered the jobs whose
deliveries were all sent, publish pending jobs to the GPU queue (urgent first) and inferred jobs
nobody finished again, and publish deliveries whose next attempt is due to the CPU queue. Every step works from database rows, so the loop can stop at any point and
the next pass (in this or a restarted process) carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from workflow.assembler import complete_stable_studies
from common.db import session_factory
from common import audit
from common.models import Delivery, Job
from common.settings import Settings
from workflow.retention import prune_spool

from .app import CPU_QUEUE, gpu_queue
from common.holds import hold_point
from common.retries import JOB_RETRY_BACKOFF_MAX_S
from workflow.outbox import (
    RecentlyPublished,
    finish_delivered_jobs,
    publish_due_deliveries,
    publish_pending_jobs,
    requeue_abandoned_jobs,
    requeue_failed_jobs,
    requeue_lost_messages,
    resume_inferred_jobs,
)

__all__ = ["Dispatcher", "DispatchPass", "RETENTION_INTERVAL_S", "RETENTION_ACTOR"]

#: How often the loop applies spool retention (storage.retention_days): hourly, and at start.
RETENTION_INTERVAL_S = 3600.0
#: The audit trail's actor of the removals ``serve`` makes by itself.
RETENTION_ACTOR = "medrega-gateway serve (storage.retention_days)"

log = logging.getLogger(__name__)


@dataclass
class DispatchPass:
    jobs_created: int = 0
    jobs_requeued: int = 0
    jobs_published: int = 0
    deliveries_published: int = 0
    files_pruned: int = 0
    broker_error: str | None = None


class Dispatcher:
    def __init__(self, settings: Settings, interval_s: float = 1.0) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self._sessions = session_factory(settings.database_url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published_deliveries: RecentlyPublished = {}
        self._next_retention = 0.0  # monotonic time of the next retention pass: the first pass

    def publish_job(self, job: Job) -> None:
        """Give a job's task to the broker (the GPU queue, the job's priority)."""
        from .tasks import process_study

        hold_point("job.pending")
        process_study.apply_async((job.id,), queue=gpu_queue(self.settings), priority=job.priority)

    def _publish_delivery(self, delivery: Delivery) -> None:
        from .tasks import deliver_document

        deliver_document.apply_async((delivery.id,), queue=CPU_QUEUE)

    def run_once(self) -> DispatchPass:
        result = DispatchPass()
        with self._sessions() as session:
            jobs = complete_stable_studies(session, self.settings.node.stable_after_s)
            session.commit()
            result.jobs_created = len(jobs)
            queue = self.settings.queue
            result.jobs_requeued = requeue_abandoned_jobs(session, queue.job_lease_s)
            result.jobs_requeued += requeue_lost_messages(session, queue.visibility_timeout_s + queue.job_lease_s)
            result.jobs_requeued += requeue_failed_jobs(session, queue.job_lease_s + JOB_RETRY_BACKOFF_MAX_S)
            finish_delivered_jobs(session)
            try:
                result.jobs_published = publish_pending_jobs(session, self.publish_job)
                result.jobs_published += resume_inferred_jobs(session, self.publish_job, queue.job_lease_s)
                result.deliveries_published = publish_due_deliveries(session, self._publish_delivery,
                                                                       self._published_deliveries)
            except Exception as exc:  # noqa: BLE001 - broker down: rows stay, next pass retries
                session.rollback()
                result.broker_error = f"{type(exc).__name__}: {exc}"
                log.warning("broker unavailable, will retry: %s", result.broker_error)
            if time.monotonic() >= self._next_retention:
                self._next_retention = time.monotonic() + RETENTION_INTERVAL_S
                result.files_pruned = self._apply_retention(session)
        return result

    def _apply_retention(self, session: Session) -> int:
        """Remove what ``storage.retention_days`` allows (:mod:`workflow.retention`); the removal
        is audited like ``medrega-gateway spool prune``'s, with this process as the actor."""
        storage = self.settings.storage
        if not storage.retention_days and not storage.quarantine_retention_days:
            return 0
        report = prune_spool(session, self.settings.data_dir, storage.retention_days,
                             storage.quarantine_retention_days)
        if report.removed_anything:
            subject = {"retention_days": storage.retention_days,
                       "quarantine_retention_days": storage.quarantine_retention_days,
                       "studies": [s.study_instance_uid for s in report.studies][:1000],
                       "files": report.files + report.quarantine_files,
                       "bytes": report.bytes + report.quarantine_bytes}
            audit.record(session, actor=RETENTION_ACTOR, role="system", action="spool.prune",
                         query=audit.query_text("medrega-gateway serve", subject=subject))
            session.commit()
            log.info("retention: removed %d files (%d bytes) of %d studies, %d quarantined files",
                     report.files, report.bytes, len(report.studies), report.quarantine_files)
        return report.files + report.quarantine_files

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - keep the loop alive (e.g. database briefly locked)
                log.exception("dispatcher pass failed")
            self._stop.wait(self.interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
