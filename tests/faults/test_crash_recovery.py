"""Issue 13 case 4: ``kill -9`` of ``serve`` (embedded mode) in each non-terminal job and delivery
state; after a restart every job and delivery ends terminal and no SR reaches the PACS twice.

``serve`` is held at a named point (:mod:`common.holds`: the stage writes a marker file and
waits) where the state under test is committed, so the kill lands in that state every time; no
sleep races the pipeline. Where the state follows a failure (``failed``, waiting for the retry;
``inferred`` after a failure) the stage is made to fail once first (``MEDREGA_FAIL_AT``).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from common.holds import FAIL_AT_ENV, HOLD_AT_ENV, HOLD_DIR_ENV, HOLD_POINTS
from common.db import session_scope
from common.models import Delivery, DeliveryState, Job, JobState
from tests.dicom_node.corpus import write_series
from tests.e2e.harness import wait_for
from tests.faults.rig import sr_languages_by_study

pytestmark = [pytest.mark.peers, pytest.mark.slow]

TERMINAL_JOB = {JobState.DELIVERED, JobState.DEAD, JobState.CANCELLED}
TERMINAL_DELIVERY = {DeliveryState.SENT, DeliveryState.FAILED}

#: (hold point, fail point, the job's state there, its deliveries' states there)
CASES = [
    ("job.pending", None, JobState.PENDING, []),
    ("job.queued", None, JobState.QUEUED, []),
    ("job.running", None, JobState.RUNNING, []),
    ("job.failed", "job.running", JobState.FAILED, []),  # waiting for the retry
    ("job.inferred", None, JobState.INFERRED, []),
    ("job.failed", "job.inferred", JobState.INFERRED, []),  # inferred, waiting for the retry
    ("job.sr_written", None, JobState.SR_WRITTEN, [DeliveryState.PENDING] * 2),
    ("delivery.sending", None, JobState.SR_WRITTEN, [DeliveryState.PENDING] * 2),  # one claimed
    ("delivery.sent", None, JobState.SR_WRITTEN, [DeliveryState.PENDING, DeliveryState.SENT]),
]


def test_every_hold_point_is_tested() -> None:
    assert {hold for hold, *_ in CASES} == set(HOLD_POINTS)


def _states(url: str) -> tuple[list[JobState], list[DeliveryState]]:
    with session_scope(url) as s:
        return (list(s.scalars(select(Job.state).order_by(Job.id))),
                sorted(s.scalars(select(Delivery.state)), key=lambda d: d.value))


@pytest.mark.parametrize("hold,fail,job_state,delivery_states", CASES,
                         ids=[f"{hold}" + (f"-after-failing-at-{fail}" if fail else "") for hold, fail, *_ in CASES])
def test_serve_killed_in_each_state_recovers_everything_and_sends_nothing_twice(
        make_rig, tmp_path: Path, hold: str, fail: str | None, job_state: JobState,
        delivery_states: list[DeliveryState]) -> None:
    rig = make_rig()
    rig.start_pacs()
    env = {HOLD_AT_ENV: hold, HOLD_DIR_ENV: str(tmp_path)}
    if fail:
        env[FAIL_AT_ENV] = fail
    serve = rig.serve(env=env)
    files = write_series(tmp_path / "study", 3)  # a CT series of 3: fewer is taken for a localizer
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    rig.send(files)

    marker = tmp_path / f"{hold}.held"
    wait_for(marker.exists, 120, f"serve to hold at {hold}", [serve])
    # The stage holds once its state is committed (the dispatcher marks a job queued just after
    # publishing it, so that one may take a moment).
    wait_for(lambda: _states(rig.db_url) == ([job_state], sorted(delivery_states, key=lambda d: d.value)),
             30, f"job {job_state.value}, deliveries {[d.value for d in delivery_states]}", [serve])
    serve.stop(signal.SIGKILL)
    sent_before = len(rig.pacs.files())

    serve = rig.serve("serve-restarted.log")
    wait_for(lambda: rig.all_delivered(1), 120, "every job delivered after the restart", [serve, rig.pacs])
    jobs, deliveries = _states(rig.db_url)
    assert not [s for s in jobs if s not in TERMINAL_JOB] and not [s for s in deliveries if s not in TERMINAL_DELIVERY]
    assert deliveries == [DeliveryState.SENT] * 2
    # Each SR reached the PACS once: what was sent before the kill was not sent again.
    assert sent_before == delivery_states.count(DeliveryState.SENT)
    assert sr_languages_by_study(rig.pacs.files()) == {study_uid: ["en", "zh"]}
