"""DICOM TLS (PS3.15 B.1) with DCMTK built against OpenSSL: echoscu/storescu +tls to the node,
and deliver() to storescp +tls."""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy import func, select

from dicom_node.scp import StorageSCP
from sender.scu import deliver, echo
from dicom_node.tls import TLSConfigurationError, server_context
from gateway import admin
from common.db import session_scope
from common.models import DeliveryState, Instance
from tests.dicom_node.conftest import NODE_AE
from tests.dicom_node.corpus import write_series
from tests.sender.test_scu import make_delivery
from tests.peers.dcmtk import echoscu, make_test_pki, storescp, storescu

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _tls_node_settings(settings_factory, pki, require_client: bool):
    return settings_factory(node={
        "tls_certificate": str(pki.server_certificate), "tls_private_key": str(pki.server_key),
        "tls_ca_certificates": str(pki.ca_certificate), "tls_require_client_certificate": require_client,
    })


def _client_tls(pki) -> list[str]:
    return ["+tls", str(pki.client_key), str(pki.client_certificate), "+cf", str(pki.ca_certificate)]


def test_tls_echo_and_store_with_client_certificate(settings_factory, pki, tmp_path):
    settings = _tls_node_settings(settings_factory, pki, require_client=True)
    files = write_series(tmp_path / "s", 3)
    with StorageSCP(settings) as node:
        ok = echoscu("127.0.0.1", node.port, called_ae=NODE_AE, extra_args=_client_tls(pki))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        storescu("127.0.0.1", node.port, files, called_ae=NODE_AE, extra_args=_client_tls(pki))

        anonymous = echoscu("127.0.0.1", node.port, called_ae=NODE_AE,
                            extra_args=["+tla", "+cf", str(pki.ca_certificate)])
        assert anonymous.returncode != 0  # no client certificate: handshake refused
        plain = echoscu("127.0.0.1", node.port, called_ae=NODE_AE)
        assert plain.returncode != 0  # not TLS at all
        untrusted = echoscu("127.0.0.1", node.port, called_ae=NODE_AE,
                            extra_args=["+tls", str(pki.client_key), str(pki.client_certificate)])
        assert untrusted.returncode != 0  # the client does not trust the node's CA
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count(Instance.id))) == 3


def test_a_stalled_tls_handshake_does_not_block_other_callers(settings_factory, pki):
    settings = _tls_node_settings(settings_factory, pki, require_client=True)
    with StorageSCP(settings) as node, socket.create_connection(("127.0.0.1", node.port)):
        # connected, never says anything
        proc = echoscu("127.0.0.1", node.port, called_ae=NODE_AE, extra_args=_client_tls(pki), timeout=10)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tls_without_client_certificate_when_not_required(settings_factory, pki):
    settings = _tls_node_settings(settings_factory, pki, require_client=False)
    with StorageSCP(settings) as node:
        proc = echoscu("127.0.0.1", node.port, called_ae=NODE_AE,
                       extra_args=["+tla", "+cf", str(pki.ca_certificate)])
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deliver_over_tls_to_storescp(settings_factory, pki, tmp_path):
    # the gateway presents the client certificate when it sends
    settings = settings_factory(node={
        "tls_certificate": str(pki.client_certificate), "tls_private_key": str(pki.client_key),
        "tls_ca_certificates": str(pki.ca_certificate)})
    server_tls = ["+tls", str(pki.server_key), str(pki.server_certificate), "+cf", str(pki.ca_certificate)]
    with storescp(tmp_path / "pacs", ae_title="PACS", extra_args=server_tls) as pacs:
        with session_scope(settings.database_url) as s:
            admin.add_destination(s, "pacs", "PACS", "127.0.0.1", pacs.port, tls=True)
            admin.add_destination(s, "pacs-plain", "PACS", "127.0.0.1", pacs.port, tls=False)
        assert echo(settings, "pacs") == 0
        result = deliver(settings, make_delivery(settings, "pacs"))
        assert result.state is DeliveryState.SENT, result.error
        pacs.wait_for_files(1)
        plain = deliver(settings, make_delivery(settings, "pacs-plain", name="b.dcm"))
        assert plain.state is DeliveryState.PENDING  # a TLS port does not speak plain DICOM


def test_incomplete_tls_settings_name_the_key(settings_factory, pki):
    settings = settings_factory(node={"tls_certificate": str(pki.server_certificate)})
    with pytest.raises(TLSConfigurationError, match="node.tls_private_key"):
        server_context(settings.node)
    settings = settings_factory(node={"tls_require_client_certificate": True,
                                      "tls_certificate": str(pki.server_certificate),
                                      "tls_private_key": str(pki.server_key)})
    with pytest.raises(TLSConfigurationError, match="node.tls_ca_certificates"):
        StorageSCP(settings).start()


@pytest.mark.slow
def test_tls_association_served_by_a_second_listener_process(settings_factory, pki, tmp_path):
    """A connection handed to another listener process is wrapped in TLS there, with the same
    certificates: a stalled connection keeps the first process busy, so the next ones go to
    the second."""
    settings = _tls_node_settings(settings_factory, pki, require_client=True)
    files = write_series(tmp_path / "s", 2)
    with StorageSCP(settings, processes=2) as node:
        loads = node._acceptor._loads._array
        with socket.create_connection(("127.0.0.1", node.port)):  # never says anything
            deadline = time.monotonic() + 5
            while list(loads) != [1, 0] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert list(loads) == [1, 0]
            ok = echoscu("127.0.0.1", node.port, called_ae=NODE_AE, extra_args=_client_tls(pki))
            assert ok.returncode == 0, ok.stdout + ok.stderr
            storescu("127.0.0.1", node.port, files, called_ae=NODE_AE, extra_args=_client_tls(pki))
            plain = echoscu("127.0.0.1", node.port, called_ae=NODE_AE)
            assert plain.returncode != 0  # not TLS: refused in that process too
    with session_scope(settings.database_url) as s:
        assert s.scalar(select(func.count(Instance.id))) == 2
