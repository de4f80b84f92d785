"""Issue 17, logs: with ``logging.format = "json"`` everything ``serve`` writes (the node, the
dispatcher, the embedded Celery worker with its banner, warnings and shutdown) is one JSON object
per line; every line written while working on the study, its job and its deliveries carries
``study_instance_uid``, ``job_id`` and ``delivery_id``; and an unreachable destination gives one
ERROR line, not one per attempt, then a line when it recovers.

Embedded mode, replay model, DCMTK storescp as the PACS (started late), DCMTK storescu as the
modality: the real worker path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import func, select

from common.db import session_scope
from common.models import Delivery, DeliveryAttempt
from tests.dicom_node.corpus import write_series
from tests.e2e.harness import wait_for

pytestmark = [pytest.mark.peers, pytest.mark.slow]

FAILED_ATTEMPTS = 6


def _failed_attempts(url: str) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count(DeliveryAttempt.id)).where(DeliveryAttempt.status.is_(None))) or 0


def test_json_lines_with_ids_and_one_error_for_a_destination_down(make_rig, tmp_path: Path):
    rig = make_rig(sections={"logging": {"format": "json"},
                             "sender": {"backoff_initial_s": 0.3, "backoff_max_s": 0.6, "retries": 100}})
    serve = rig.serve()
    files = write_series(tmp_path / "study", 3)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    rig.send(files)
    wait_for(lambda: _failed_attempts(rig.db_url) >= FAILED_ATTEMPTS, 90,
             f"{FAILED_ATTEMPTS} failed attempts while the PACS is down", [serve])
    rig.start_pacs()
    wait_for(lambda: rig.all_delivered(1), 60, "the SRs to be delivered once the PACS is up", [serve, rig.pacs])
    failed = _failed_attempts(rig.db_url)
    serve.stop()

    entries = []
    for n, line in enumerate(serve.log().splitlines(), start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"line {n} of serve's output is not JSON: {line!r}")
    assert entries and all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    loggers = {e["logger"] for e in entries}
    assert {"celery.apps.worker", "workers.embedded", "workflow.assembler", "sender.scu"} <= loggers, loggers
    assert any(e["message"].startswith("worker: warm shutdown") for e in entries)  # Celery's, as a record

    (job,) = rig.jobs()
    with session_scope(rig.db_url) as s:
        delivery_ids = set(s.scalars(select(Delivery.id)).all())
    complete = [e for e in entries if e["logger"] == "workflow.assembler" and "study complete" in e["message"]]
    assert [(e.get("study_instance_uid"), e.get("job_id")) for e in complete] == [(study_uid, job.id)]
    job_lines = [e for e in entries if e["logger"] in ("workers.tasks", "sender.scu")]
    assert job_lines and all((e.get("study_instance_uid"), e.get("job_id")) == (study_uid, job.id)
                             for e in job_lines), [e for e in job_lines if e.get("job_id") != job.id][:3]
    sent = [e for e in entries if re.match(r"delivery \d+ sent to pacs", e["message"])]
    assert {e["delivery_id"] for e in sent} == delivery_ids
    for e in entries:
        named = re.match(r"delivery (\d+) ", e["message"])
        if named:
            assert e.get("delivery_id") == int(named.group(1)), e

    errors = [e for e in entries if e["level"] == "ERROR"]
    assert len(errors) == 1, f"{failed} failed attempts gave {len(errors)} ERROR lines: {errors[:5]}"
    assert errors[0]["logger"] == "sender.scu" and "connection refused (ECONNREFUSED)" in errors[0]["message"]
    assert not [e for e in entries if e["logger"].startswith("pynetdicom") and e["level"] in ("WARNING", "ERROR")]
    (recovered,) = [e for e in entries if " recovered: " in e["message"]]
    found = re.search(r"after (\d+) failures \(ECONNREFUSED\)", recovered["message"])
    assert found is not None, recovered
    count = int(found.group(1))
    assert FAILED_ATTEMPTS <= count <= failed, recovered


def test_the_worker_command_writes_only_json_lines(make_rig):
    """``medrega-gateway worker`` (a GPU host's process) with JSON logs: Celery's start (no banner),
    its security warning and its shutdown are JSON records like the rest."""
    import signal

    rig = make_rig(sections={"logging": {"format": "json"}})
    worker = rig.worker("worker.log")
    wait_for(lambda: "ready." in worker.log(), 60, "the worker to be ready", [worker])
    worker.stop(signal.SIGINT)  # Ctrl+C: Celery's own messages
    lines = worker.log().splitlines()
    entries = []
    for n, line in enumerate(lines, start=1):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"line {n} of the worker's output is not JSON: {line!r}")
    messages = [(e["logger"], e["message"]) for e in entries]
    assert ("celery.apps.worker", f"celery@{__import__('socket').gethostname()} ready.") in messages, messages
    assert any(logger == "workers.embedded" and message.startswith("celery worker ") for logger, message in messages)
    assert ("workers.app", "worker: warm shutdown (SIGINT)") in messages, messages
