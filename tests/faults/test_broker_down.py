"""Issue 7, fault 2: the Redis broker is down while studies arrive.

Production mode (private Redis, PostgreSQL, a separate worker, replay model). With Redis stopped,
the node still accepts and stores every instance (it never needs the broker); the studies' jobs
are recorded and stay ``pending`` while the dispatcher cannot publish them. When Redis is back
(empty: it kept nothing), every study is processed and delivered, one SR per language each. A first
study goes through before the outage, so the processes meet the outage with warm connections.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from common.models import JobState
from tests.dicom_node.corpus import write_series
from tests.e2e.harness import free_port, wait_for
from tests.faults.rig import sr_languages_by_study

pytestmark = [pytest.mark.peers, pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

STUDIES = 3


def test_broker_down_while_studies_arrive_nothing_lost(postgres_url, make_rig, tmp_path: Path):
    redis_port = free_port()
    rig = make_rig(database_url=postgres_url, broker_url=f"redis://127.0.0.1:{redis_port}/0")
    redis_proc = rig.redis(redis_port)
    rig.start_pacs()
    serve = rig.serve()
    worker = rig.worker("worker.log")
    rig.send(write_series(tmp_path / "before", 4))
    wait_for(lambda: rig.all_delivered(1), 60, "the study sent before the outage to be delivered",
             [serve, worker, rig.pacs])

    redis_proc.stop(signal.SIGKILL)
    for n in range(STUDIES):
        rig.send(write_series(tmp_path / f"study{n}", 4))  # asserts exit status 0: every C-STORE succeeded
    assert rig.instance_count() == 4 * (STUDIES + 1)
    assert len(rig.spool_files()) == 4 * (STUDIES + 1)

    def outage_jobs():
        return rig.jobs()[1:]

    wait_for(lambda: len(outage_jobs()) == STUDIES, 60, "a job for every study", [serve, worker])
    failures_at_jobs = serve.log().count("broker unavailable")
    wait_for(lambda: serve.log().count("broker unavailable") >= failures_at_jobs + 3, 60,
             "three more dispatcher passes to fail to publish", [serve, worker])
    assert [(j.state, j.published_at) for j in outage_jobs()] == [(JobState.PENDING, None)] * STUDIES, \
        "a job did not stay pending while the broker was down"
    assert worker.alive(), "the worker gave up while the broker was down"

    redis_proc.start()
    wait_for(lambda: rig.all_delivered(STUDIES + 1), 120, "every study to be delivered after Redis came back",
             [serve, worker, redis_proc, rig.pacs])

    received = sr_languages_by_study(rig.pacs.files())
    assert len(received) == STUDIES + 1, f"SRs for {len(received)} of {STUDIES + 1} studies"
    assert all(langs == ["en", "zh"] for langs in received.values()), received
    assert len(rig.pacs.files()) == 2 * (STUDIES + 1)
