"""Every change made on the command line is in the audit log, as the API's changes are: the
operating-system user as actor, the command and what it changed, refusals with their reason."""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import select

from common.db import session_scope
from common.models import AuditEvent, Job, JobState, Study, utcnow
from common.settings import load_settings
from tests.e2e.harness import cli, free_port, write_config


def _events(config: Path) -> list[AuditEvent]:
    with session_scope(load_settings(config, environ={}).database_url) as s:
        rows = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        s.expunge_all()
        return list(rows)


def test_cli_changes_are_audited_with_the_os_user(tmp_path: Path) -> None:
    config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[])
    cli(config, "db", "upgrade")
    env_user = "radiology-admin"
    os.environ["LOGNAME"] = env_user  # getpass.getuser() reads LOGNAME first; the subprocess inherits it
    try:
        cli(config, "ae", "add", "CT1", "--host", "10.0.0.0/8")
        assert cli(config, "ae", "add", "CT1", check=False).returncode == 1
        cli(config, "dest", "add", "pacs", "PACS", "127.0.0.1", "104")
        cli(config, "route", "add", "ct", "--modality", "CT", "--destinations", "pacs")
        cli(config, "route", "remove", "ct")
        cli(config, "ae", "remove", "CT1")
        token = cli(config, "token", "create", "--name", "alice", "--role", "auditor").stdout.strip()
        cli(config, "token", "revoke", "alice")
        with session_scope(load_settings(config, environ={}).database_url) as s:
            study = Study(study_instance_uid="1.2.3", version=1,
                          first_received_at=utcnow(), last_received_at=utcnow())
            s.add(study)
            s.flush()
            s.add(Job(study_id=study.id, study_version=1, state=JobState.DEAD, destinations=[],
                      created_at=utcnow(), updated_at=utcnow()))
        cli(config, "jobs", "retry", "1")
        cli(config, "jobs", "cancel", "1")
        refused = cli(config, "jobs", "cancel", "1", check=False)
        assert refused.returncode == 1, refused.stderr
        reason = refused.stderr.strip().removeprefix("medrega-gateway: ")
        cli(config, "dest", "remove", "pacs")
    finally:
        del os.environ["LOGNAME"]

    events = _events(config)
    assert [(e.action, e.outcome) for e in events] == [
        ("admin.calling_ae.add", "success"),
        ("admin.calling_ae.add", "failure"),
        ("admin.destination.add", "success"),
        ("admin.route.add", "success"),
        ("admin.route.remove", "success"),
        ("admin.calling_ae.remove", "success"),
        ("admin.token.create", "success"),
        ("admin.token.revoke", "success"),
        ("admin.job.retry", "success"),
        ("admin.job.cancel", "success"),
        ("admin.job.cancel", "failure"),
        ("admin.destination.remove", "success"),
    ]
    assert {(e.actor, e.role) for e in events} == {(env_user, "cli")}
    first = json.loads(events[0].query or "{}")
    assert first["path"] == "medrega-gateway ae add"
    assert first["subject"]["ae_title"] == "CT1" and first["subject"]["host"] == "10.0.0.0/8"
    assert "already exists" in json.loads(events[1].query or "{}")["error"]
    assert json.loads(events[10].query or "{}")["error"] == reason
    assert token and all(token not in (e.query or "") for e in events)  # the secret is never logged


def test_cli_changes_and_refusals_reach_the_syslog_collector(tmp_path: Path) -> None:
    """An auditor who reads the syslog collector (api.audit_syslog_host) sees the command line's
    changes too, as DICOM audit messages (PS3.15 A.5) naming the OS user, refusals as failures."""
    import socket
    import xml.etree.ElementTree as ET

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        config = write_config(tmp_path, node_port=free_port(), backend="replay", model_path="x", destinations=[],
                              sections={"api": {"audit_syslog_host": "127.0.0.1",
                                                "audit_syslog_port": collector.getsockname()[1]}})
        cli(config, "db", "upgrade")
        os.environ["LOGNAME"] = "radiology-admin"
        try:
            cli(config, "ae", "add", "CT1")
            assert cli(config, "ae", "add", "CT1", check=False).returncode == 1
        finally:
            del os.environ["LOGNAME"]
        messages = []
        for _ in range(2):
            data, _ = collector.recvfrom(65535)
            messages.append(ET.fromstring(data[data.index(b"<?xml"):]))
    idents = [m.find("EventIdentification") for m in messages]
    outcomes = [i.get("EventOutcomeIndicator") if i is not None else None for i in idents]
    assert outcomes == ["0", "4"], outcomes  # success, then minor failure (PS3.15 A.5.1)
    for message in messages:
        users = [p.get("UserID") for p in message.findall("ActiveParticipant")]
        assert "radiology-admin" in users, users
    assert len(_events(config)) == 2
