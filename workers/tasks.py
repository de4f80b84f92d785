"""Celery tasks: ``process_study`` (model + SR writing) and ``deliver_document`` (C-STORE).

Both are idempotent, because a task may run twice (a re-published outbox row, a redelivery after
a worker was lost):

- a job is *claimed* by one conditional UPDATE (``pending``/``queued``/``failed`` -> ``running``,
  or a ``running`` job whose heartbeat is older than the task time limit); a second copy of the
  task finds nothing to claim and returns;
- findings are written in one transaction that first removes any partial earlier attempt;
- SR SOP Instance UIDs are derived from (study, version, language), and documents and deliveries
  are unique, so a retry rewrites the same SR and never creates a second delivery;
- the sender never sends a delivery that is already ``sent``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, overload

from celery import Task
from sqlalchemy import delete, select, update
from sqlalchemy.exc import OperationalError

from common.db import installation_uid_root, session_scope
from common.holds import hold_point
from common.logs import log_context
from common.retries import JOB_MAX_RETRIES, JOB_RETRY_BACKOFF_MAX_S, JOB_RETRY_BACKOFF_S
from common.models import (
    DeliveryState,
    Finding,
    ImageSelection,
    Instance,
    Job,
    JobState,
    ModelRun,
    Study,
    utcnow,
)

from workflow.jobs import JobAction, transition
from workflow.retention import pruned_message
from workflow.states import TransitionError

from .app import CPU_QUEUE, celery_app, settings

if TYPE_CHECKING:  # the model package is imported by the GPU task only
    from common.settings import Settings
    from model.analysis import RunResult

__all__ = ["process_study", "deliver_document", "run_job", "PermanentJobError"]

log = logging.getLogger(__name__)


def worker_name() -> str:
    """Who runs a job: host and process id (several GPU workers share a host, one per GPU)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class LostClaimError(RuntimeError):
    """The job was given to another worker while this one worked on it (its lease expired)."""


class PermanentJobError(RuntimeError):
    """Retrying cannot help (missing model, unreadable study): the job goes to ``dead``."""


class StudyEmptyError(RuntimeError):
    """The job's study has no instances left (all moved to other studies): it was cancelled."""


@overload
def _db_text(text: str) -> str: ...
@overload
def _db_text(text: None) -> None: ...
@overload
def _db_text(text: str | None) -> str | None: ...
def _db_text(text: str | None) -> str | None:
    """Model output may contain NUL (a byte token), which PostgreSQL text cannot store."""
    return None if text is None else text.replace("\x00", "\ufffd")


def _claim(job_id: int, lease_s: float) -> bool:
    """Atomically move the job to ``running`` for this worker; False if someone else has it."""
    url = settings().database_url
    now = utcnow()
    stale = now - dt.timedelta(seconds=lease_s)
    me = worker_name()
    with session_scope(url) as session:
        try:
            transition(session, job_id, JobAction.CLAIM, detail=f"worker {me}", now=now,
                       when=(Job.state != JobState.RUNNING) | (Job.updated_at < stale),
                       worker=me, attempts=Job.attempts + 1)
        except TransitionError:
            return False
    return True


def _heartbeat(job_id: int) -> Callable[[str], None]:
    """Progress callback: keeps the claim fresh (``updated_at``) while the model works."""
    url = settings().database_url
    last = [0.0]

    def beat(message: str) -> None:
        log.info("job %s: %s", job_id, message)
        if time.monotonic() - last[0] < 10:
            return
        last[0] = time.monotonic()
        with session_scope(url) as session:
            session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING)
                            .values(updated_at=utcnow()))

    return beat


def _record_selection(session, job_id: int, analysis, instance_ids: dict[str, int]) -> None:
    """One ``image_selections`` row per choice and per exclusion, with its reason (issue 14)."""
    plans = {(choice.image.sop_instance_uid, choice.frame_number): plan for choice, plan in analysis.plans}
    for choice in analysis.selection.chosen:
        skipped = next((why for image, why in analysis.skipped if image.sop_instance_uid == choice.image.sop_instance_uid), None)
        session.add(ImageSelection(
            job_id=job_id, instance_id=instance_ids.get(choice.image.sop_instance_uid),
            series_instance_uid=choice.image.series_instance_uid, frame_number=choice.frame_number,
            chosen=skipped is None, plan=plans.get((choice.image.sop_instance_uid, choice.frame_number)),
            view=choice.view, reason=choice.reason if skipped is None else f"{choice.reason}; could not be read: {skipped}",
        ))
    for decision in analysis.selection.excluded:
        image = decision.image
        session.add(ImageSelection(
            job_id=job_id, instance_id=instance_ids.get(image.sop_instance_uid) if image else None,
            series_instance_uid=decision.series_instance_uid, frame_number=None, chosen=False,
            reason=_db_text(decision.reason),
        ))


def _infer(job_id: int) -> None:
    """Run the model over the job's images and record model runs and findings (one transaction)."""
    from common.uids import derive_uid
    from model.analysis import SourceImage, analyse, number_regions
    from model.backends import load_backend
    from sr_writer.coding import coded_option
    from model.prompts import LANGUAGES, REGION_TASKS

    cfg = settings()
    with session_scope(cfg.database_url) as session:
        job = session.get_one(Job, job_id)
        study = session.get_one(Study, job.study_id)
        rows = session.scalars(
            select(Instance).where(Instance.study_id == study.id).order_by(Instance.id).limit(job.instance_count)
        ).all()
        images = [
            SourceImage(
                path=cfg.data_dir / row.path,
                sop_instance_uid=row.sop_instance_uid,
                sop_class_uid=row.sop_class_uid,
                series_instance_uid=row.series.series_instance_uid,
                modality=row.series.modality,
                body_part_examined=row.series.body_part_examined,
                rows=row.rows,
                columns=row.columns,
                number_of_frames=row.number_of_frames,
                instance_number=row.instance_number,
                image_position_patient=row.image_position_patient,
                image_orientation_patient=row.image_orientation_patient,
                series_number=row.series.series_number,
            )
            for row in rows
        ]
        instance_ids = {row.sop_instance_uid: row.id for row in rows}
        study_uid, version = study.study_instance_uid, job.study_version
        pruned = [row.pruned_at for row in rows if row.pruned_at is not None]
        uid_root = installation_uid_root(session)
        if not rows:
            # Every instance moved to another study after the job was made (a changed re-send,
            # see dicom_node.ingest): nothing is left to report on.
            transition(session, job, JobAction.STUDY_EMPTIED,
                       detail="no instances left in the study (moved to other studies)")
    if not rows:
        raise StudyEmptyError(f"job {job_id}: study {study_uid} has no instances left")
    if pruned:  # storage.retention_days removed them: retrying cannot bring them back
        raise PermanentJobError(f"job {job_id}: {pruned_message(study_uid, max(pruned))}")

    hold_point("job.running")
    backend = load_backend(cfg.model)
    analysis = analyse(images, backend, cfg.model, progress=_heartbeat(job_id))
    results, skipped = analysis.runs, analysis.skipped
    identity = backend.identity

    with session_scope(cfg.database_url) as session:
        job = session.get_one(Job, job_id, with_for_update=True)
        if job.state != JobState.RUNNING or job.worker != worker_name():
            # This worker stalled past its lease and the job went to another one: drop our work.
            raise LostClaimError(f"job {job_id} is now {job.state.value} with worker {job.worker}")
        # Remove what an interrupted earlier attempt may have written, then record afresh.
        session.execute(delete(Finding).where(Finding.job_id == job_id))
        session.execute(delete(ModelRun).where(ModelRun.job_id == job_id))
        session.execute(delete(ImageSelection).where(ImageSelection.job_id == job_id))
        _record_selection(session, job_id, analysis, instance_ids)
        numbers = number_regions(results)
        codes = _finding_codes(results)
        n_regions = 0
        for result in results:
            run = ModelRun(
                job_id=job_id,
                instance_id=instance_ids[result.image.sop_instance_uid],
                frame_number=result.frame_number,
                language=result.language,
                task=result.task,
                backend=identity.backend,
                model_name=identity.name,
                model_version=identity.version,
                weights_id=identity.weights_id,
                prompt=_db_text(result.prompt),
                raw_answer=_db_text(result.raw_answer),
                duration_s=result.duration_s,
                selection_reason=result.selection_reason,
                plan=result.plan or None,
                prompt_id=result.prompt_id or None,
                training_set=result.training_set,
                window=result.window,
                view=result.view,
                truncated=result.truncated,
                removed_sentences=[{"sentence": _db_text(r.sentence), "reason": r.reason} for r in result.removed] or None,
            )
            session.add(run)
            session.flush()
            where = dict(referenced_sop_instance_uid=result.image.sop_instance_uid,
                         referenced_sop_class_uid=result.image.sop_class_uid, frame_number=result.frame_number)
            if result.task == "classification":
                # A coded finding about the whole image, in both languages (model/classification.py).
                if result.classification is not None:
                    option = result.classification.option
                    for language in LANGUAGES:
                        value, scheme, meaning = coded_option(option, language)
                        session.add(Finding(job_id=job_id, model_run_id=run.id, language=language,
                                            kind="classification", label=option[:256], code_value=value,
                                            code_scheme=scheme, code_meaning=meaning[:256], **where))
                continue
            if result.task == "region_to_text":
                continue  # its answer is the description of the detection box it was asked about
            # Report text; a region answer's own text is kept only when it named no region
            # ("nothing found" is a finding), since its descriptions go with the regions.
            if result.unparsed or (result.text and (result.task not in REGION_TASKS or not result.regions)):
                session.add(Finding(job_id=job_id, model_run_id=run.id, language=result.language, kind="report",
                                    text=_db_text(result.text if not result.unparsed else result.raw_answer),
                                    unparsed=result.unparsed, **where))
            for region in result.regions:
                code_value, code_scheme, code_meaning = codes[region.match_key][result.language]
                x1, y1, x2, y2 = region.box
                px1, py1, px2, py2 = region.pixels
                session.add(Finding(
                    job_id=job_id, model_run_id=run.id, language=result.language, kind="region",
                    label=_db_text(region.label)[:256], text=_db_text(region.description),
                    code_value=code_value, code_scheme=code_scheme, code_meaning=code_meaning,
                    box_x1=x1, box_y1=y1, box_x2=x2, box_y2=y2,
                    px_x1=px1, px_y1=py1, px_x2=px2, px_y2=py2,
                    tracking_uid=derive_uid("tracking", study_uid, str(version), region.match_key,
                                            root=uid_root),
                    tracking_identifier=f"region {numbers[region.match_key]}",
                    **where,
                ))
                n_regions += 1
        job = session.get_one(Job, job_id)
        job.images_skipped = len(skipped)
        truncated = sum(r.truncated for r in results)
        detail = (f"{len(results)} model runs, {n_regions} region boxes, model {identity.name}; "
                  f"{len(analysis.selection.chosen)} image(s) chosen, {len(analysis.selection.excluded)} left out")
        if truncated:
            detail += f"; {truncated} answer(s) cut off at max_new_tokens"
        if skipped:
            detail += "; could not read " + "; ".join(f"{image.sop_instance_uid}: {why}" for image, why in skipped)
        transition(session, job, JobAction.INFER, detail=detail)
    if not results:
        # The selection is recorded (the study page and the API show each exclusion's reason);
        # retrying would choose the same nothing, so the job ends here instead of retrying forever.
        raise PermanentJobError(f"job {job_id}: no image of the study was asked anything ({detail})")


def _finding_codes(results: Sequence[RunResult]) -> dict[str, dict[str, tuple[str, str, str]]]:
    """One Finding code per box (``match_key``, hence Tracking UID), meaning per language.

    The box's labels in every language are resolved together (:func:`sr_writer.coding.resolve_finding_codes`),
    so the English and the Chinese SR code the same box alike.
    """
    from sr_writer.coding import resolve_finding_codes

    labels: dict[str, dict[str, str]] = {}
    for result in results:
        for region in result.regions:
            labels.setdefault(region.match_key, {}).setdefault(result.language, region.label)
    return {match_key: resolve_finding_codes(by_language) for match_key, by_language in labels.items()}


def _write_results(job_id: int) -> list[int]:
    """Write the SRs (and presentation states) and create one delivery per destination."""
    from .results import write_job_documents

    cfg = settings()
    with session_scope(cfg.database_url) as session:
        job = session.get_one(Job, job_id)
        documents = write_job_documents(session, cfg, job)
        delivery_ids = [d.id for doc in documents for d in doc.deliveries if d.state == DeliveryState.PENDING]
        transition(session, job, JobAction.WRITE_SR,
                   detail=f"{len(documents)} documents, {len(delivery_ids)} deliveries")
    return delivery_ids


def run_job(job_id: int) -> str:
    """Do the job's work if this worker can claim it. Returns what happened (for logs and tests)."""
    cfg = settings()
    with session_scope(cfg.database_url) as session:
        job = session.get(Job, job_id)
        if job is None:
            return "missing"
        state = job.state
        study_uid = session.scalar(select(Study.study_instance_uid).where(Study.id == job.study_id))
    with log_context(job_id=job_id, study_instance_uid=study_uid):
        return _run_job(cfg, job_id, state)


def _run_job(cfg: Settings, job_id: int, state: JobState) -> str:
    if state in (JobState.SR_WRITTEN, JobState.DELIVERY_FAILED, JobState.DELIVERED, JobState.CANCELLED,
                 JobState.DEAD):
        return f"skipped ({state.value})"
    if state != JobState.INFERRED:
        if not _claim(job_id, lease_s=cfg.queue.job_lease_s):
            return "skipped (claimed by another worker)"
        _infer(job_id)
        hold_point("job.inferred")
    delivery_ids = _write_results(job_id)
    hold_point("job.sr_written")
    for delivery_id in delivery_ids:
        publish_delivery(delivery_id)
    return "done"


def publish_delivery(delivery_id: int) -> None:
    """Queue a delivery now; if the broker is down the dispatcher publishes it later."""
    try:
        deliver_document.apply_async((delivery_id,), queue=CPU_QUEUE)
    except Exception as exc:  # noqa: BLE001 - any broker error: the outbox retries
        log.warning("delivery %s not published now (%s); the dispatcher will", delivery_id, exc)


def _fail(job_id: int, exc: BaseException, permanent: bool) -> None:
    cfg = settings()
    with session_scope(cfg.database_url) as session:
        error = f"{type(exc).__name__}: {exc}"
        action = JobAction.FAIL_PERMANENTLY if permanent else JobAction.FAIL
        try:
            # A failure after inference keeps the findings: the retry goes on to writing the SRs.
            transition(session, job_id, action, detail=error, error=error)
        except TransitionError as refused:
            log.error("job %s: the failure (%s) is not recorded: %s", job_id, error, refused)


@celery_app.task(bind=True, name="medrega.process_study", acks_late=True, autoretry_for=(Exception,),
                 max_retries=JOB_MAX_RETRIES, retry_backoff=JOB_RETRY_BACKOFF_S,
                 retry_backoff_max=JOB_RETRY_BACKOFF_MAX_S, retry_jitter=False)
def process_study(self: Task, job_id: int) -> str:
    """Inference and SR writing for one job (one version of one study).

    A failure that may pass is recorded (``failed``) and raised again: Celery retries the task
    (``autoretry_for``) after its exponential backoff (the policy: :mod:`common.retries`); past the
    last retry the job is ``dead``.

    Every line logged meanwhile carries ``job_id`` and ``study_instance_uid``.
    """
    with log_context(job_id=job_id, study_instance_uid=_study_of(job_id)):
        return _process_study(self, job_id)


def _study_of(job_id: int) -> str | None:
    """The job's Study Instance UID for the log context (None if the database cannot say now)."""
    try:
        with session_scope(settings().database_url) as session:
            return session.scalar(select(Study.study_instance_uid).join(Job, Job.study_id == Study.id)
                                  .where(Job.id == job_id))
    except OperationalError:
        return None


def _process_study(self: Task, job_id: int) -> str:
    from model.backends import ModelLoadError

    try:
        hold_point("job.queued")
        return run_job(job_id)
    except LostClaimError as exc:
        log.warning("%s; this copy stops", exc)
        return "skipped (claim lost)"
    except StudyEmptyError as exc:
        log.warning("%s; cancelled", exc)
        return "cancelled"
    except (ModelLoadError, PermanentJobError) as exc:
        log.error("job %s is dead: %s", job_id, exc)
        _fail(job_id, exc, permanent=True)
        return "dead"
    except OperationalError as exc:  # database briefly unavailable: retried
        _fail(job_id, exc, permanent=self.request.retries >= self.max_retries)
        raise
    except Exception as exc:
        log.exception("job %s failed", job_id)
        permanent = self.request.retries >= self.max_retries
        _fail(job_id, exc, permanent=permanent)
        if permanent:
            return "dead"
        hold_point("job.failed")
        raise


@celery_app.task(name="medrega.deliver_document", acks_late=True)
def deliver_document(delivery_id: int) -> str:
    """C-STORE one document to one destination (see :func:`sender.scu.deliver`); the delivery's
    transition settles its job in the same transaction (:func:`workflow.deliveries.settle_job`)."""
    from sender.scu import deliver

    with log_context(delivery_id=delivery_id):
        result = deliver(settings(), delivery_id)
        if result.state == DeliveryState.SENT:
            hold_point("delivery.sent")
    return result.state.value
