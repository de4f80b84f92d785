"""Retry policies: what each stage tries again, how often and how long it waits (the one place).

The loops and delays are tenacity's and Celery's, not hand-written:

- **Ingest** (:mod:`dicom_node.ingest`): recording a new instance may meet a concurrent write (the
  same SOP Instance UID filed meanwhile by another association, or a cached study or series
  deleted meanwhile); it is tried again at once, :data:`INGEST_CONFLICT_ATTEMPTS` attempts in all
  (:func:`ingest_conflict_retrying`).
- **A job's task** (:func:`workers.tasks.process_study`): a failed run is retried by Celery
  (``autoretry_for`` with ``retry_backoff``) :data:`JOB_MAX_RETRIES` times, after
  :data:`JOB_RETRY_BACKOFF_S` x 2^retry seconds, at most :data:`JOB_RETRY_BACKOFF_MAX_S` (the
  outbox requeues a failed job whose retry did not come within the lease after that).
- **A delivery** (:mod:`sender.scu`): the number of attempts and the waits are settings
  (``sender.retries``, ``sender.backoff_initial_s``, ``sender.backoff_max_s``); the wait after
  the n-th failed attempt is :func:`delivery_backoff_s`, tenacity's exponential wait. It is a
  due time in the database (a delivery outlives the process), not a sleep.
"""

from __future__ import annotations

import tenacity
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

__all__ = [
    "INGEST_CONFLICT_ATTEMPTS",
    "JOB_MAX_RETRIES",
    "JOB_RETRY_BACKOFF_S",
    "JOB_RETRY_BACKOFF_MAX_S",
    "ingest_conflict_retrying",
    "delivery_backoff_s",
]

#: Attempts in all to record a new instance whose row met a concurrent write.
INGEST_CONFLICT_ATTEMPTS = 4

#: Retries of a failed job's task after its first run; past them the job is dead.
JOB_MAX_RETRIES = 5
#: Seconds before a failed job's first retry; each further retry waits twice as long.
JOB_RETRY_BACKOFF_S = 10
#: The longest wait before a failed job's retry, in seconds.
JOB_RETRY_BACKOFF_MAX_S = 600


def ingest_conflict_retrying(conflict: type[BaseException]) -> Retrying:
    """Try again at once when ``conflict`` is raised, :data:`INGEST_CONFLICT_ATTEMPTS` attempts in
    all; then :class:`tenacity.RetryError` (its ``last_attempt`` holds the last conflict)."""
    return Retrying(stop=stop_after_attempt(INGEST_CONFLICT_ATTEMPTS),
                    retry=retry_if_exception_type(conflict), sleep=_no_sleep)


def _no_sleep(seconds: float) -> None:
    """Conflicts are retried at once (tenacity's default wait is 0; no call to time.sleep)."""


def delivery_backoff_s(initial_s: float, max_s: float, attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1-based): ``initial_s`` doubled per
    further attempt, at most ``max_s``; 0 before any attempt."""
    if attempts <= 0:
        return 0.0
    state = tenacity.RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempts
    return float(wait_exponential(multiplier=initial_s, max=max_s)(state))
