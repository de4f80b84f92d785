"""``medrega-gateway deliveries list|retry|cancel`` and ``dest remove`` as an administrator types
them (issue 17): the exact error of a real failed attempt, the job following its deliveries, the
rules of workflow.deliveries, every change audited with the operating-system user."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from common.db import session_scope
from common.models import AuditEvent, Delivery, DeliveryState, Document, Job, JobState
from common.settings import load_settings
from sender.scu import deliver
from tests.e2e.harness import cli, free_port, write_config
from tests.peers.dcmtk import storescp
from tests.sender.test_scu import make_delivery

pytestmark = pytest.mark.peers


def _written_job(url: str, delivery_id: int) -> int:
    """The delivery's job as the worker leaves it: SRs written, deliveries pending."""
    with session_scope(url) as s:
        job = s.scalars(select(Job).join(Document, Document.job_id == Job.id)
                        .join(Delivery, Delivery.document_id == Document.id).where(Delivery.id == delivery_id)).one()
        job.state = JobState.SR_WRITTEN
        return job.id


def _state(url: str, model, row_id: int):
    with session_scope(url) as s:
        return s.get_one(model, row_id).state


def test_list_retry_cancel_and_remove_as_typed(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x",
                          destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": port}],
                          sections={"sender": {"retries": 0, "backoff_initial_s": 0}})
    cli(config, "db", "upgrade")
    cli(config, "dest", "add", "pacs", "PACS", "127.0.0.1", str(port))
    settings = load_settings(config, environ={})
    url = settings.database_url
    first = make_delivery(settings, "pacs", name="a.dcm")
    job = _written_job(url, first)

    assert deliver(settings, first).state is DeliveryState.FAILED  # nothing listens: retries 0
    assert _state(url, Job, job) is JobState.DELIVERY_FAILED
    listed = cli(config, "deliveries", "list", "--state", "failed").stdout
    assert f"connection refused (ECONNREFUSED) to 127.0.0.1:{port}" in listed, listed
    assert listed.splitlines()[1].split()[:3] == [str(first), "failed", "pacs"]
    history = cli(config, "deliveries", "list", "--destination", "pacs", "--history").stdout
    assert "failed    " in history and "1 attempts, last: connection refused (ECONNREFUSED)" in history, history
    jobs = cli(config, "jobs", "list", "--state", "delivery_failed").stdout
    assert f"delivery {first} to pacs failed" in jobs, jobs

    os.environ["LOGNAME"] = "pacs-admin"
    try:
        assert "is pending again" in cli(config, "deliveries", "retry", str(first)).stdout
        assert _state(url, Job, job) is JobState.SR_WRITTEN
        with storescp(tmp_path / "pacs", ae_title="PACS", port=port) as pacs:
            assert deliver(settings, first).state is DeliveryState.SENT
            pacs.wait_for_files(1)
        assert _state(url, Job, job) is JobState.DELIVERED
        again = cli(config, "deliveries", "retry", str(first), check=False)
        assert again.returncode == 1 and again.stderr.strip() == (
            f"medrega-gateway: delivery {first} is sent; retry is allowed only from failed, cancelled")

        second, third = make_delivery(settings, "pacs", name="b.dcm"), make_delivery(settings, "pacs", name="c.dcm")
        assert "cancelled" in cli(config, "deliveries", "cancel", str(second)).stdout
        removed = cli(config, "dest", "remove", "pacs").stdout
        assert removed.strip() == f"removed destination pacs; 1 pending or failed deliveries to it cancelled ({third})"
        gone = cli(config, "deliveries", "retry", str(third), check=False)
        assert gone.returncode == 1 and "destination 'pacs' no longer exists" in gone.stderr
        unknown = cli(config, "deliveries", "list", "--state", "lost", check=False)
        assert unknown.returncode == 1 and "unknown delivery state 'lost'" in unknown.stderr
        assert "Traceback" not in unknown.stderr
    finally:
        del os.environ["LOGNAME"]

    cancelled = cli(config, "deliveries", "list", "--state", "cancelled").stdout
    assert "cancelled: destination pacs removed" in cancelled and "cancelled: cancelled by administrator (CLI)" in cancelled
    with session_scope(url) as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.actor == "pacs-admin").order_by(AuditEvent.id)).all()
        assert [(e.action, e.outcome) for e in events] == [
            ("admin.delivery.retry", "success"), ("admin.delivery.retry", "failure"),
            ("admin.delivery.cancel", "success"), ("admin.destination.remove", "success"),
            ("admin.delivery.retry", "failure"),
        ]
        assert json.loads(events[3].query or "{}")["subject"]["cancelled_deliveries"] == [third]
        assert {e.role for e in events} == {"cli"}
