"""deliver()/echo() and an administrator's retry against DCMTK storescp as the destination."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pydicom
import pytest
from sqlalchemy import select

import sender.scu as sender
from sender.scu import (
    AssociationFailedError,
    DestinationNotFoundError,
    deliver,
    echo,
)
from workflow import deliveries
from workflow.states import TransitionNotAllowedError
from gateway import admin
from common.db import session_scope
from common.models import Delivery, DeliveryAttempt, DeliveryState, Document, Job, Study
from tests.conftest import free_port
from tests.dicom_node.corpus import sample
from tests.peers.dcmtk import storescp, write_association_profile

pytestmark = pytest.mark.peers

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"


def make_delivery(settings, destination: str, *, sop_class_uid: str | None = None, name: str = "sr.dcm") -> int:
    """A Document (copy of pydicom's test-SR.dcm, optionally relabelled) and its Delivery."""
    docs = settings.data_dir / "documents"
    docs.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(sample("test-SR.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if sop_class_uid:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(sop_class_uid)
    ds.save_as(docs / name)
    with session_scope(settings.database_url) as s:
        study = s.scalar(select(Study).where(Study.study_instance_uid == ds.StudyInstanceUID))
        if study is None:
            study = Study(study_instance_uid=ds.StudyInstanceUID)
            s.add(study)
            s.flush()
        job = Job(study_id=study.id, study_version=len(study.jobs) + 1)
        s.add(job)
        s.flush()
        doc = Document(job_id=job.id, kind="sr", sop_class_uid=ds.SOPClassUID,
                       sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                       path=f"documents/{name}")
        s.add(doc)
        s.flush()
        delivery = Delivery(document_id=doc.id, destination_name=destination)
        s.add(delivery)
        s.flush()
        return delivery.id


def add_destination(settings, name: str, port: int, ae_title: str = "PACS", **kw) -> None:
    with session_scope(settings.database_url) as s:
        admin.add_destination(s, name, ae_title, "127.0.0.1", port, **kw)


def attempts(settings, delivery_id: int) -> Sequence[DeliveryAttempt]:
    with session_scope(settings.database_url) as s:
        return s.scalars(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id == delivery_id)
                         .order_by(DeliveryAttempt.id)).all()


def get_delivery(settings, delivery_id: int) -> Delivery:
    with session_scope(settings.database_url) as s:
        return s.get_one(Delivery, delivery_id)


def test_echo_a_destination(settings, tmp_path):
    with storescp(tmp_path / "pacs", ae_title="PACS") as pacs:
        add_destination(settings, "pacs", pacs.port)
        assert echo(settings, "pacs") == 0x0000


def test_the_scu_announces_the_gateway_not_pynetdicom(settings):
    """Issue 13, case 7: the Implementation Class UID and Version Name the destination sees."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    from common.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

    seen = []

    def on_echo(event):
        requestor = event.assoc.requestor
        seen.append((requestor.implementation_class_uid, requestor.implementation_version_name))
        return 0x0000

    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(Verification)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, on_echo)])
    try:
        add_destination(settings, "probe", server.server_address[1])
        assert echo(settings, "probe") == 0x0000
    finally:
        server.shutdown()
    assert seen == [(IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)]


def test_echo_unknown_destination_and_down_destination(settings):
    with pytest.raises(DestinationNotFoundError):
        echo(settings, "nowhere")
    add_destination(settings, "down", free_port())
    with pytest.raises(AssociationFailedError, match="down"):
        echo(settings, "down")


def test_deliver_sends_once_and_records_the_attempt(settings, tmp_path):
    with storescp(tmp_path / "pacs", ae_title="PACS") as pacs:
        add_destination(settings, "pacs", pacs.port)
        delivery_id = make_delivery(settings, "pacs")
        result = deliver(settings, delivery_id)
        assert result.state is DeliveryState.SENT
        assert result.status == 0x0000
        assert result.sop_class_uid == COMPREHENSIVE_SR
        (received,) = pacs.wait_for_files(1)
        assert pydicom.dcmread(received).SOPClassUID == COMPREHENSIVE_SR

        again = deliver(settings, delivery_id)  # already SENT: nothing is sent
        assert again.state is DeliveryState.SENT
        assert len(pacs.files()) == 1
    row = get_delivery(settings, delivery_id)
    assert row.state is DeliveryState.SENT
    assert row.delivered_at is not None
    assert row.sent_sop_class_uid == COMPREHENSIVE_SR
    assert row.attempts == 1
    assert [(a.status, a.error) for a in attempts(settings, delivery_id)] == [(0, None)]


def test_calling_ae_title_is_the_sender_setting_or_the_node_title(settings_factory, tmp_path):
    """storescp records the calling AE title as (0002,0016) Source Application Entity Title."""
    default = settings_factory()
    explicit = default.model_copy(update={"sender": default.sender.model_copy(
        update={"calling_ae_title": "MEDREGA_OUT"})})
    with storescp(tmp_path / "pacs", ae_title="PACS") as pacs:
        add_destination(default, "pacs", pacs.port)
        assert deliver(default, make_delivery(default, "pacs", name="a.dcm")).state is DeliveryState.SENT
        (first,) = pacs.wait_for_files(1)
        assert deliver(explicit, make_delivery(explicit, "pacs", name="b.dcm")).state is DeliveryState.SENT
        (second,) = set(pacs.wait_for_files(2)) - {first}
    assert pydicom.dcmread(first).file_meta.SourceApplicationEntityTitle == "MEDREGA"
    assert pydicom.dcmread(second).file_meta.SourceApplicationEntityTitle == "MEDREGA_OUT"


def test_destination_down_then_back_retries_with_backoff(settings, tmp_path):
    port = free_port()
    add_destination(settings, "pacs", port)
    delivery_id = make_delivery(settings, "pacs")

    first = deliver(settings, delivery_id)
    assert first.state is DeliveryState.PENDING
    assert first.status is None and first.error == f"connection refused (ECONNREFUSED) to 127.0.0.1:{port}"
    assert first.retry_in_s == settings.sender.backoff_initial_s
    row = get_delivery(settings, delivery_id)
    assert row.attempts == 1 and row.next_attempt_at is not None

    early = deliver(settings, delivery_id)  # before the backoff has elapsed: no attempt
    assert early.state is DeliveryState.PENDING and early.retry_in_s > 0
    assert len(attempts(settings, delivery_id)) == 1

    with storescp(tmp_path / "pacs", ae_title="PACS", port=port) as pacs:
        with session_scope(settings.database_url) as s:  # time passes
            s.get(Delivery, delivery_id).next_attempt_at = dt.datetime.now(dt.timezone.utc)
        result = deliver(settings, delivery_id)
        assert result.state is DeliveryState.SENT
        pacs.wait_for_files(1)
    assert [a.status for a in attempts(settings, delivery_id)] == [None, 0]


def test_exponential_backoff_is_capped():
    from common.settings import load_settings

    s = load_settings(environ={}, sender={"backoff_initial_s": 5, "backoff_max_s": 60})
    assert [sender.backoff_s(s, n) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_failed_after_retries_then_an_administrator_retries(settings, tmp_path):
    settings = settings.model_copy(update={"sender": settings.sender.model_copy(
        update={"retries": 1, "backoff_initial_s": 0})})
    port = free_port()
    add_destination(settings, "pacs", port)
    delivery_id = make_delivery(settings, "pacs")
    assert deliver(settings, delivery_id).state is DeliveryState.PENDING
    final = deliver(settings, delivery_id)
    assert final.state is DeliveryState.FAILED
    assert deliver(settings, delivery_id).state is DeliveryState.FAILED  # no attempt made
    assert len(attempts(settings, delivery_id)) == 2

    with session_scope(settings.database_url) as s:
        deliveries.retry(s, delivery_id, "test")
    with storescp(tmp_path / "pacs", ae_title="PACS", port=port) as pacs:
        assert deliver(settings, delivery_id).state is DeliveryState.SENT
        pacs.wait_for_files(1)
    with session_scope(settings.database_url) as s, pytest.raises(TransitionNotAllowedError):
        deliveries.retry(s, delivery_id, "test")  # a sent delivery is never sent a second time


def test_refused_sop_class_without_fallback_is_a_recorded_failure(settings, tmp_path):
    """A destination that accepts only CT Image Storage refuses every SR class we propose."""
    profile = write_association_profile(tmp_path / "ct.cfg", [("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])])
    with storescp(tmp_path / "pacs", ae_title="PACS", profile=profile) as pacs:
        add_destination(settings, "pacs", pacs.port)
        delivery_id = make_delivery(settings, "pacs")
        result = deliver(settings, delivery_id)
        assert result.state is DeliveryState.PENDING
        assert "accepts none of the SOP classes" in result.error
        assert pacs.files() == []


def test_disabled_destination_is_not_sent_to(settings, tmp_path):
    with storescp(tmp_path / "pacs", ae_title="PACS") as pacs:
        add_destination(settings, "pacs", pacs.port)
        with session_scope(settings.database_url) as s:
            admin.get_destination(s, "pacs").enabled = False
        result = deliver(settings, make_delivery(settings, "pacs"))
        assert result.state is DeliveryState.PENDING and "disabled" in result.error
        assert pacs.files() == []


COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def test_destination_refusing_comprehensive_3d_sr_gets_the_fallback(settings, tmp_path):
    """storescp configured to accept only Comprehensive SR: the 3D SR is rewritten by
    sr_writer.fallback and the class actually sent is recorded."""
    from sr_writer.fallback import fallback_uid

    profile = write_association_profile(tmp_path / "sr.cfg", [(COMPREHENSIVE_SR, ["1.2.840.10008.1.2.1"])])
    with storescp(tmp_path / "pacs", ae_title="PACS", profile=profile) as pacs:
        add_destination(settings, "pacs", pacs.port)
        delivery_id = make_delivery(settings, "pacs", sop_class_uid=COMPREHENSIVE_3D_SR)
        result = deliver(settings, delivery_id)
        assert result.state is DeliveryState.SENT, result.error
        assert result.sop_class_uid == COMPREHENSIVE_SR
        (received,) = pacs.wait_for_files(1)
    with session_scope(settings.database_url) as s:
        delivery = s.get(Delivery, delivery_id)
        original_uid = delivery.document.sop_instance_uid
        assert delivery.sent_sop_class_uid == COMPREHENSIVE_SR
        assert delivery.document.sop_class_uid == COMPREHENSIVE_3D_SR
    ds = pydicom.dcmread(received)
    assert ds.SOPClassUID == COMPREHENSIVE_SR
    assert ds.SOPInstanceUID == fallback_uid(original_uid, COMPREHENSIVE_SR)
    assert [a.sop_class_uid for a in attempts(settings, delivery_id)] == [COMPREHENSIVE_SR]


def _two_workers_at_once(settings, tmp_path) -> None:
    import concurrent.futures

    with storescp(tmp_path / "pacs", ae_title="PACS") as pacs:
        add_destination(settings, "pacs", pacs.port)
        delivery_id = make_delivery(settings, "pacs")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: deliver(settings, delivery_id), range(4)))
        assert sum(r.state is DeliveryState.SENT and r.status == 0 for r in results) == 1
        assert all(r.state in (DeliveryState.SENT, DeliveryState.PENDING) for r in results)
        pacs.wait_for_files(1)
        import time

        time.sleep(0.5)
        assert len(pacs.files()) == 1
    assert len(attempts(settings, delivery_id)) == 1
    assert deliver(settings, delivery_id).state is DeliveryState.SENT


def test_workers_delivering_the_same_delivery_at_once_send_one_copy(settings, tmp_path):
    _two_workers_at_once(settings, tmp_path)


@pytest.mark.postgres
def test_deliver_on_postgresql(postgres_url, tmp_path):
    from common.db import upgrade
    from tests.dicom_node.conftest import make_settings

    upgrade(postgres_url)
    settings = make_settings(tmp_path / "data", postgres_url)
    _two_workers_at_once(settings, tmp_path)


# -- the exact failure of each attempt (issue 17) -------------------------------------------------

def _one_attempt(settings, name: str, port: int, **kw) -> DeliveryAttempt:
    add_destination(settings, name, port, **kw)
    delivery_id = make_delivery(settings, name, name=f"{name}.dcm")
    deliver(settings, delivery_id)
    (attempt,) = attempts(settings, delivery_id)
    return attempt


def test_connection_refused_is_recorded_with_its_errno_and_pynetdicom_says_nothing(settings, caplog):
    import logging

    port = free_port()
    with caplog.at_level(logging.WARNING):
        attempt = _one_attempt(settings, "refusing", port)
    assert attempt.status is None
    assert attempt.error == f"connection refused (ECONNREFUSED) to 127.0.0.1:{port}"
    # The sender's own line, with the same words; none of pynetdicom's ("TCP Initialisation Error").
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == ["sender.scu"]
    assert attempt.error in caplog.records[-1].getMessage()


def test_a_connect_timeout_is_recorded_with_the_time_waited(settings_factory):
    """A listener whose accept queue is full: Linux drops further SYNs, the connect times out."""
    import socket

    settings = settings_factory(node={"network_timeout_s": 1})
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):  # fill the accept queue (backlog 0 still takes one or two)
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        attempt = _one_attempt(settings, "silent", port)
    finally:
        for filler in fillers:
            filler.close()
        server.close()
    assert attempt.error == f"connection to 127.0.0.1:{port} timed out after 1 s"


def test_no_answer_to_the_association_request_is_an_acse_timeout(settings_factory):
    """A peer that accepts the TCP connection and never answers the A-ASSOCIATE-RQ."""
    import socket

    settings = settings_factory(node={"acse_timeout_s": 1})
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    try:
        attempt = _one_attempt(settings, "mute", port)
    finally:
        server.close()
    assert attempt.error == (f"PACS@127.0.0.1:{port} did not answer the association request within 1 s "
                             f"(ACSE timeout)")


def test_a_rejected_association_is_recorded_with_result_source_and_reason(settings, caplog):
    """A Storage SCP that knows itself by another AE title answers with an A-ASSOCIATE-RJ
    (PS3.8 9.3.4: rejected-permanent, service-user, called AE title not recognised)."""
    import logging

    from pynetdicom import AE

    pacs = AE(ae_title="OTHER")
    pacs.require_called_aet = True
    pacs.add_supported_context(COMPREHENSIVE_SR)
    server = pacs.start_server(("127.0.0.1", 0), block=False)
    port = server.server_address[1]
    try:
        with caplog.at_level(logging.WARNING):
            attempt = _one_attempt(settings, "refuser", port)
    finally:
        server.shutdown()
    assert attempt.error == (f"association rejected by PACS@127.0.0.1:{port}: Called AE title not recognised "
                             f"(Rejected Permanent, source Service User)")
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING
            and r.threadName == "MainThread"] == ["sender.scu"]  # not pynetdicom's three lines


def test_a_failure_status_is_recorded_with_its_meaning(settings):
    """A Storage SCP out of resources answers 0xA700 (PS3.4 B.2.3) with an Error Comment."""
    from pynetdicom import AE, evt

    def on_store(event):
        status = pydicom.Dataset()
        status.Status = 0xA700
        status.ErrorComment = "disk full"
        return status

    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(COMPREHENSIVE_SR)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        attempt = _one_attempt(settings, "full", server.server_address[1])
    finally:
        server.shutdown()
    assert (attempt.status, attempt.error) == (0xA700, "C-STORE status 0xA700 Refused: Out of Resources (disk full)")


def test_repeated_failures_are_logged_once_then_summarised_then_recovered(settings, tmp_path, caplog):
    """Issue 17: one unreachable destination is not an ERROR line per attempt."""
    import logging

    clock = [1000.0]
    summary = sender.RepeatedFailures(logging.getLogger("sender.scu"), window_s=60, clock=lambda: clock[0])
    previous, sender.FAILURES = sender.FAILURES, summary
    port = free_port()
    add_destination(settings, "pacs1", port)
    try:
        with caplog.at_level(logging.INFO, logger="sender.scu"):
            for n in range(13):
                deliver(settings, make_delivery(settings, "pacs1", name=f"{n}.dcm"))
                clock[0] += 1
            clock[0] += 60
            deliver(settings, make_delivery(settings, "pacs1", name="late.dcm"))
            with storescp(tmp_path / "pacs", ae_title="PACS", port=port) as pacs:
                assert deliver(settings, make_delivery(settings, "pacs1", name="ok.dcm")).state is DeliveryState.SENT
                pacs.wait_for_files(1)
    finally:
        sender.FAILURES = previous
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors
    assert errors[0].endswith(f"failed, next in 1 s: connection refused (ECONNREFUSED) to 127.0.0.1:{port}")
    assert errors[1].startswith("13 more failures to pacs1 in the last 73 s; last: delivery ")
    (recovered,) = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert recovered.startswith("pacs1 recovered: delivery ") and "after 14 failures (ECONNREFUSED)" in recovered
