"""Association control seen from DCMTK echoscu/storescu (PS3.8 9.3.4 rejection reasons)."""

from __future__ import annotations

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import text

from dicom_node.policy import host_matches
from dicom_node.scp import StorageSCP
from gateway import admin
from common.db import make_engine, session_scope
from tests.dicom_node.conftest import NODE_AE
from tests.peers.dcmtk import echoscu

pytestmark = pytest.mark.peers

CALLING_NOT_RECOGNIZED = "Calling AE Title Not Recognized"
CALLED_NOT_RECOGNIZED = "Called AE Title Not Recognized"


def _echo(node, calling_ae: str = "CT1", called_ae: str = NODE_AE):
    proc = echoscu("127.0.0.1", node.port, called_ae=called_ae, calling_ae=calling_ae)
    return proc.returncode, proc.stdout + proc.stderr


def test_called_ae_title_must_be_the_nodes(node):
    code, out = _echo(node, called_ae="SOMEONE_ELSE")
    assert code != 0
    assert CALLED_NOT_RECOGNIZED in out
    assert "Rejected Permanent" in out


def test_empty_allow_list_accepts_any_caller(node):
    assert _echo(node, calling_ae="ANYONE")[0] == 0


def test_listed_callers_only_once_the_list_is_not_empty_and_changes_apply_at_once(node, settings):
    with session_scope(settings.database_url) as s:
        admin.add_calling_ae(s, "CT1")
    assert _echo(node, "CT1")[0] == 0
    code, out = _echo(node, "MR1")
    assert code != 0 and CALLING_NOT_RECOGNIZED in out and "Rejected Permanent" in out

    with session_scope(settings.database_url) as s:  # no restart
        admin.add_calling_ae(s, "MR1")
        admin.remove_calling_ae(s, "CT1")
    assert _echo(node, "MR1")[0] == 0
    assert CALLING_NOT_RECOGNIZED in _echo(node, "CT1")[1]


def test_a_disabled_caller_is_refused_and_the_list_stays_enforced(node, settings):
    """Issue 17: callers are enabled and disabled on the pages; disabling the only caller must
    not open the node to everyone."""
    with session_scope(settings.database_url) as s:
        admin.add_calling_ae(s, "CT1")
        admin.set_calling_ae_enabled(s, "CT1", False)
    code, out = _echo(node, "CT1")
    assert code != 0 and CALLING_NOT_RECOGNIZED in out and "Rejected Permanent" in out
    assert CALLING_NOT_RECOGNIZED in _echo(node, "ANYONE")[1]
    with session_scope(settings.database_url) as s:  # no restart
        admin.set_calling_ae_enabled(s, "CT1", True)
    assert _echo(node, "CT1")[0] == 0


@pytest.mark.parametrize("pinned,accepted", [
    ("127.0.0.1", True), ("127.0.0.0/8", True), ("localhost", True),
    ("10.20.30.40", False), ("192.168.0.0/16", False), ("pacs.invalid", False),
])
def test_caller_pinned_to_a_host(node, settings, pinned, accepted):
    with session_scope(settings.database_url) as s:
        admin.add_calling_ae(s, "CT1", host=pinned)
    code, out = _echo(node, "CT1")
    assert (code == 0) is accepted, out
    if not accepted:
        assert CALLING_NOT_RECOGNIZED in out


def test_require_known_callers_with_an_empty_list_accepts_nobody(settings_factory):
    settings = settings_factory(node={"require_known_callers": True})
    with StorageSCP(settings) as node:
        code, out = _echo(node, "CT1")
        assert code != 0 and CALLING_NOT_RECOGNIZED in out
        with session_scope(settings.database_url) as s:
            admin.add_calling_ae(s, "CT1")
        assert _echo(node, "CT1")[0] == 0


def test_database_unavailable_rejects_transiently(node, settings):
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE calling_aes RENAME TO calling_aes_away"))
    try:
        code, out = _echo(node, "CT1")
        assert code != 0
        assert "Rejected Transient" in out
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE calling_aes_away RENAME TO calling_aes"))
    assert _echo(node, "CT1")[0] == 0


def test_maximum_associations_rejects_with_local_limit_exceeded(settings_factory):
    settings = settings_factory(node={"maximum_associations": 1})
    with StorageSCP(settings) as node:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert held.is_established
        try:
            code, out = _echo(node, "CT1")
            assert code != 0
            assert "Local Limit Exceeded" in out
        finally:
            held.release()
        assert _echo(node, "CT1")[0] == 0


def test_host_matches_normalises_ipv4_mapped_addresses():
    assert host_matches("10.1.2.3", "::ffff:10.1.2.3")
    assert host_matches("10.1.0.0/16", "::ffff:10.1.2.3")
    assert not host_matches("10.1.2.4", "10.1.2.3")
    assert host_matches("", "10.1.2.3")


def test_own_title_from_loopback_verifies_whatever_the_allow_list_and_stores_nothing(node, settings):
    """The node's self-check (`status`, the health check) as its own title from loopback is
    accepted for verification only: an allow-list without that title does not refuse it, and a
    C-STORE over such an association has no presentation context to go on."""
    from gateway.status import check_node

    with session_scope(settings.database_url) as s:
        admin.add_calling_ae(s, "CT1")
    assert CALLING_NOT_RECOGNIZED in _echo(node, "OTHER")[1]
    assert _echo(node, NODE_AE)[0] == 0
    check = check_node(settings.model_copy(update={"node": settings.node.model_copy(update={"port": node.port})}))
    assert check.ok, check.detail

    from pydicom.uid import ExplicitVRLittleEndian

    secondary_capture = "1.2.840.10008.5.1.4.1.1.7"
    ae = AE(ae_title=NODE_AE)
    ae.add_requested_context(Verification)
    ae.add_requested_context(secondary_capture, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    try:
        assert assoc.is_established
        assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [str(Verification)]
        assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == [secondary_capture]
    finally:
        assoc.release()


def test_status_says_why_the_node_is_down(settings):
    from gateway.status import check_node
    from tests.conftest import free_port

    port = free_port()
    check = check_node(settings.model_copy(update={"node": settings.node.model_copy(update={"port": port})}))
    assert not check.ok
    assert f"nothing accepts connections on 127.0.0.1:{port}: Connection refused" in check.detail
    assert "medrega-gateway serve" in check.detail
