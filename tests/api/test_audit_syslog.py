"""DICOM audit messages (PS3.15 A.5) over syslog UDP: one datagram per committed event."""

from __future__ import annotations

import base64
import socket
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient

from gateway.api.app import create_app
from common.audit import SyslogAuditSender

from .conftest import Env
from .factories import make_study


def _one(parent: ET.Element, path: str) -> ET.Element:
    """The element at ``path`` under ``parent`` (the test fails naming it when it is missing)."""
    found = parent.find(path)
    assert found is not None, f"no {path} in {parent.tag}"
    return found


@pytest.fixture
def collector():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def _receive(sock: socket.socket) -> tuple[str, ET.Element]:
    data, _ = sock.recvfrom(65535)
    header, xml_start, rest = data.partition(b"<?xml")
    return header.decode("ascii"), ET.fromstring(xml_start + rest)


def test_study_read_is_sent_as_dicom_audit_message(env: Env, collector: socket.socket) -> None:
    with env.session() as s:
        uid = make_study(s, env.data_dir).study.study_instance_uid
        s.commit()
    sender = SyslogAuditSender("127.0.0.1", collector.getsockname()[1], source_id="MEDREGA_TEST")
    app = create_app(env.settings, audit_sender=sender)
    with TestClient(app) as client:
        assert client.get(f"/api/v1/studies/{uid}", headers=env.headers()).status_code == 200
        header, msg = _receive(collector)
        # A refused request is reported too (Security: user authentication failed).
        client.get("/api/v1/findings", headers={"Authorization": "Bearer mrg_wrong"})
        _, refused = _receive(collector)
        client.get("/api/v1/findings", params={"modality": "CR"}, headers=env.headers())
        _, query = _receive(collector)
    sender.close()

    # RFC 5424 header: <PRI>VERSION TIMESTAMP HOST APP PROCID MSGID SD
    prival, ts, _host, app_name, pid, msgid, sd = header.split(" ")[:7]
    assert prival == "<85>1" and ts.startswith("20") and ts.endswith("+00:00") and pid.isdigit()
    assert app_name == "medrega-gateway" and msgid == "IHE+RFC-3881" and sd == "-"

    assert msg.tag == "AuditMessage"
    ident = _one(msg, "EventIdentification")
    assert ident.get("EventActionCode") == "R" and ident.get("EventOutcomeIndicator") == "0"
    assert _one(ident, "EventID").get("csd-code") == "110103"
    assert _one(ident, "EventID").get("codeSystemName") == "DCM"
    users = msg.findall("ActiveParticipant")
    assert users[0].get("UserID") == "bob-auditor" and users[0].get("UserIsRequestor") == "true"
    assert users[1].get("UserID") == "MEDREGA_TEST" and users[1].get("UserIsRequestor") == "false"
    assert _one(msg, "AuditSourceIdentification").get("AuditSourceID") == "MEDREGA_TEST"
    objects = msg.findall("ParticipantObjectIdentification")
    study = [o for o in objects if _one(o, "ParticipantObjectIDTypeCode").get("csd-code") == "110180"]
    assert study and study[0].get("ParticipantObjectID") == uid
    assert b"Doe^Jane" not in ET.tostring(msg)  # no patient data leaves in audit messages

    assert _one(refused, "EventIdentification/EventID").get("csd-code") == "110114"
    assert _one(refused, "EventIdentification").get("EventOutcomeIndicator") == "4"

    assert _one(query, "EventIdentification/EventID").get("csd-code") == "110112"
    q = [o for o in query.findall("ParticipantObjectIdentification")
         if o.find("ParticipantObjectQuery") is not None][0]
    assert b'"modality": "CR"' in base64.b64decode(_one(q, "ParticipantObjectQuery").text or "")
    detail = _one(q, "ParticipantObjectDetail")
    assert detail.get("type") == "rows" and base64.b64decode(detail.get("value", "")) == b"6"


def test_nothing_is_sent_for_a_rolled_back_read(env: Env, collector: socket.socket) -> None:
    from common import audit

    sender = SyslogAuditSender("127.0.0.1", collector.getsockname()[1])
    app = create_app(env.settings, audit_sender=sender)
    with app.state.sessions() as s:
        audit.record(s, actor="x", role="auditor", action="findings.search", rows=1)
        s.rollback()
        audit.record(s, actor="y", role="auditor", action="findings.search", rows=2)
        s.commit()
    _, msg = _receive(collector)
    assert _one(msg, "ActiveParticipant").get("UserID") == "y"
    collector.settimeout(0.2)
    with pytest.raises(socket.timeout):
        collector.recvfrom(65535)
    sender.close()
