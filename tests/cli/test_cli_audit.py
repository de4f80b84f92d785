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
    first = json.loads(events[0].query)
    assert first["path"] == "medrega-gateway ae add"
    assert first["subject"]["ae_title"] == "CT1" and first["subject"]["host"] == "10.0.0.0/8"
    assert "already exists" in json.loads(events[1].query)["error"]
    assert json.loads(events[10].query)["error"] == reason
    assert token and all(token not in (e.query or "") for e in events)  # the secret is never logged
