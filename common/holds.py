"""Hold points: a fault test stops a stage at a named point to kill the process there.

The crash-recovery tests (``tests/faults/test_crash_recovery.py``) must kill ``serve`` while a job
or a delivery is in one given state, every time, without racing a sleep against the pipeline.
Each stage calls :func:`hold_point` where such a state has been committed; when the environment
variable :data:`HOLD_AT_ENV` names that point, the process writes ``<point>.held`` in the folder
:data:`HOLD_DIR_ENV` names and then waits for ever (the test kills it). A stage may also be made
to fail once there (:data:`FAIL_AT_ENV`, :class:`InjectedFaultError`), to reach the states that
follow a failure (``failed``, waiting for the retry).

Unset (always, outside those tests) the variables cost one dictionary look-up per call.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = [
    "FAIL_AT_ENV",
    "HOLD_AT_ENV",
    "HOLD_DIR_ENV",
    "HOLD_POINTS",
    "InjectedFaultError",
    "hold_point",
]

HOLD_AT_ENV = "MEDREGA_HOLD_AT"
HOLD_DIR_ENV = "MEDREGA_HOLD_DIR"
FAIL_AT_ENV = "MEDREGA_FAIL_AT"

#: Every hold point and where it is (the state that is committed when it is reached).
HOLD_POINTS: dict[str, str] = {
    "job.pending": "the dispatcher, before it publishes a pending job",
    "job.queued": "the worker, as a published job's task starts (before its claim)",
    "job.running": "the worker, after its claim, before inference",
    "job.inferred": "the worker, after the findings are recorded, before the SRs are written",
    "job.failed": "the worker, after a failure is recorded, before the task's retry is scheduled",
    "job.sr_written": "the worker, after the SRs and deliveries are recorded, before they are published",
    "delivery.sending": "the sender, after its claim of a delivery, before the association",
    "delivery.sent": "the sender, after a delivery is recorded sent, before the job is marked delivered",
}


class InjectedFaultError(RuntimeError):
    """A failure made on purpose at a hold point (:data:`FAIL_AT_ENV`): a transient error."""


_failed_once: set[str] = set()
_lock = threading.Lock()


def hold_point(point: str) -> None:
    """Fail once, or hold for ever, here if the environment asks for it (fault tests only)."""
    fail_at, hold_at = os.environ.get(FAIL_AT_ENV), os.environ.get(HOLD_AT_ENV)
    if fail_at is None and hold_at is None:
        return
    if fail_at == point:
        with _lock:
            first = point not in _failed_once
            _failed_once.add(point)
        if first:
            raise InjectedFaultError(f"fault injected at {point} ({FAIL_AT_ENV})")
    if hold_at == point:
        folder = Path(os.environ.get(HOLD_DIR_ENV, "."))
        (folder / f"{point}.held").write_text(str(os.getpid()), encoding="ascii")
        threading.Event().wait()  # until the process is killed
