"""Issue 7, fault 3: the destination (PACS) is down when the results are ready.

Embedded mode (SQLite, embedded broker, worker inside ``serve``), replay model. No ``storescp``
listens when the SRs are written: every attempt is recorded as failed, the next one comes after
the exponential backoff (``sender.backoff_initial_s`` x 2^(n-1), capped by ``backoff_max_s``).
Once the PACS is started, each SR is delivered exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from sender.scu import backoff_s
from common.db import session_scope
from common.models import Delivery, DeliveryAttempt, DeliveryState, JobState
from common.settings import load_settings
from tests.dicom_node.corpus import write_series
from tests.e2e.harness import wait_for
from tests.faults.rig import sr_languages_by_study

pytestmark = [pytest.mark.peers, pytest.mark.slow]

FAILED_ATTEMPTS = 3


def _attempts(url: str) -> dict[int, list[DeliveryAttempt]]:
    with session_scope(url) as s:
        out: dict[int, list[DeliveryAttempt]] = {d: [] for d in s.scalars(select(Delivery.id)).all()}
        for a in s.scalars(select(DeliveryAttempt).order_by(DeliveryAttempt.id)).all():
            out[a.delivery_id].append(a)
        s.expunge_all()
        return out


def test_destination_down_retried_with_backoff_then_delivered_once(make_rig, tmp_path: Path):
    rig = make_rig(sections={"sender": {"backoff_initial_s": 1, "backoff_max_s": 2, "retries": 20}})
    settings = load_settings(rig.config, environ={})
    serve = rig.serve()
    files = write_series(tmp_path / "study", 3)
    rig.send(files)

    def failed_enough() -> bool:
        attempts = _attempts(rig.db_url)
        return len(attempts) == 2 and all(len(a) >= FAILED_ATTEMPTS for a in attempts.values())

    wait_for(failed_enough, 90, f"{FAILED_ATTEMPTS} failed attempts per delivery", [serve])
    (job,) = rig.jobs()
    assert job.state == JobState.SR_WRITTEN, f"job is {job.state} while the PACS is down"
    assert rig.delivery_states() == [DeliveryState.PENDING] * 2

    rig.start_pacs()
    wait_for(lambda: rig.all_delivered(1), 60, "the SRs to be delivered once the PACS is up", [serve, rig.pacs])

    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert sr_languages_by_study(rig.pacs.files()) == {study_uid: ["en", "zh"]}
    assert len(rig.pacs.files()) == 2
    for delivery_id, attempts in _attempts(rig.db_url).items():
        failed, last = attempts[:-1], attempts[-1]
        assert len(failed) >= FAILED_ATTEMPTS
        assert last.status == 0x0000 and last.error is None, "the last attempt must be the successful one"
        assert all(a.status is None and "connection refused" in (a.error or "") for a in failed), \
            [(a.status, a.error) for a in failed]
        for n, (prev, nxt) in enumerate(zip(attempts, attempts[1:]), start=1):
            gap = (nxt.at - prev.at).total_seconds()
            assert gap >= backoff_s(settings, n) - 0.01, \
                f"delivery {delivery_id}: attempt {n + 1} came {gap:.2f} s after attempt {n}, backoff is {backoff_s(settings, n)} s"
    by_delivery = _attempts(rig.db_url)
    with session_scope(rig.db_url) as s:
        deliveries = s.scalars(select(Delivery)).all()
        assert [(d.state, d.attempts) for d in deliveries] == [(DeliveryState.SENT, len(by_delivery[d.id])) for d in deliveries]
