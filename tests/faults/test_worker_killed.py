"""Issue 7, fault 1: ``kill -9`` of a GPU worker in the middle of inference.

Production mode: a private Redis broker, PostgreSQL, ``serve`` without a worker and separate
``worker`` processes running the ``tiny`` model (the real generate path on the CPU, ~10 s a study).
Worker A is killed while it generates; worker B, started afterwards, must take the job over and
complete it exactly once: one SR per language at the PACS, one set of model runs and findings,
the job DELIVERED and recorded as done by B.
"""

from __future__ import annotations

import re

import signal
import socket
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from common.db import session_scope
from common.models import Delivery, DeliveryState, Document, Finding, JobEvent, JobState, ModelRun
from gateway.demo.samples import make_sample_study
from tests.e2e.harness import free_port, wait_for
from tests.faults.rig import sr_languages_by_study

pytestmark = [pytest.mark.peers, pytest.mark.redis, pytest.mark.postgres, pytest.mark.slow]

LEASE_S = 30  # queue.job_lease_s: a RUNNING job without a heartbeat for this long is abandoned


def _broker_idle(url: str) -> bool:
    """No task waiting or unacknowledged: nothing is left that could send a second copy."""
    client = redis.Redis.from_url(url, decode_responses=True)
    names = [k.decode() if isinstance(k, bytes) else k for k in client.keys("*")]  # typed bytes | str
    queues = [k for k in names if not k.startswith(("_kombu", "unacked"))]
    return client.hlen("unacked") == 0 and all(client.type(k) != "list" or client.llen(k) == 0 for k in queues)


def test_worker_killed_mid_inference_job_completes_once_on_another_worker(postgres_url, make_rig, tmp_path: Path):
    redis_port = free_port()
    broker = f"redis://127.0.0.1:{redis_port}/0"
    rig = make_rig(backend="tiny", database_url=postgres_url, broker_url=broker,
                   sections={"model": {"max_new_tokens": 8},
                             "queue": {"visibility_timeout_s": 5, "job_lease_s": LEASE_S}})
    rig.redis(redis_port)
    rig.start_pacs()
    serve = rig.serve()
    worker_a = rig.worker("worker-a.log")
    sample = make_sample_study(tmp_path / "study")
    rig.send(sample.files)

    def a_is_generating() -> bool:
        # The last chosen image prepared ("image N/N: ...; plan ..."): the study's prompts are
        # with the model now (one call for the whole study), nothing is recorded yet.
        jobs = rig.jobs()
        return (bool(jobs) and jobs[0].state == JobState.RUNNING
                and re.search(r"image (\d+)/\1: ", worker_a.log()) is not None)

    wait_for(a_is_generating, 120, "worker A to be half-way through inference", [serve, worker_a])
    worker_a.stop(signal.SIGKILL)
    name_a = f"{socket.gethostname()}:{worker_a.proc.pid}"
    (job,) = rig.jobs()
    with session_scope(rig.db_url) as s:
        runs_at_kill = len(s.scalars(select(ModelRun)).all())
    assert (job.state, job.worker, runs_at_kill) == (JobState.RUNNING, name_a, 0), \
        "worker A was not killed in the middle of inference"

    worker_b = rig.worker("worker-b.log")
    name_b = f"{socket.gethostname()}:{worker_b.proc.pid}"
    wait_for(lambda: rig.all_delivered(1), 150, "the job to be delivered by worker B", [serve, worker_b, rig.pacs])
    wait_for(lambda: _broker_idle(broker), 30, "the broker to hold no more tasks", [serve, worker_b])

    assert sr_languages_by_study(rig.pacs.files()) == {sample.study_instance_uid: ["en", "zh"]}, \
        "the PACS must receive exactly one SR per language"
    with session_scope(rig.db_url) as s:
        (job,) = rig.jobs()
        assert job.state == JobState.DELIVERED
        assert job.worker == name_b, "the job was not completed by the second worker"
        assert job.attempts == 2, f"expected two claims (A, then B), got {job.attempts}"
        running = s.scalars(select(JobEvent.detail).where(JobEvent.job_id == job.id,
                                                          JobEvent.state == JobState.RUNNING.value)
                            .order_by(JobEvent.id)).all()
        assert running == [f"worker {name_a}", f"worker {name_b}"]
        runs = s.scalars(select(ModelRun)).all()
        keys = Counter((r.instance_id, r.frame_number, r.window, r.prompt) for r in runs)
        assert runs and max(keys.values()) == 1, f"duplicate model runs: {keys.most_common(3)}"
        # The sample's plans (docs/model.md): chest PA 7 prompts, lateral 1, 3 chest CT slices x 5,
        # 3 MR slices x 1, and a region description per box the CT detection found.
        planned = [r for r in runs if r.task != "region_to_text"]
        assert len(planned) == 7 + 1 + 3 * 5 + 3, f"got {len(planned)} planned model runs"
        run_ids = {r.id for r in runs}
        findings = s.scalars(select(Finding)).all()
        assert findings and all(f.model_run_id in run_ids for f in findings)
        assert len(s.scalars(select(Document)).all()) == 2
        deliveries = s.scalars(select(Delivery)).all()
        assert [(d.state, d.attempts) for d in deliveries] == [(DeliveryState.SENT, 1)] * 2
    assert "answered" in worker_b.log()
