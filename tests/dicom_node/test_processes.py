"""Several listener processes on one port (SO_REUSEPORT), and the node on PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import socket

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from dicom_node.scp import StorageSCP
from common.db import session_scope, upgrade
from common.models import Instance, Series, Study
from tests.dicom_node.conftest import NODE_AE, make_settings
from tests.dicom_node.corpus import write_series
from tests.peers.dcmtk import echoscu, storescu

pytestmark = pytest.mark.peers


def _send_four_series_at_once(node, tmp_path, count: int = 6) -> str:
    study_uid = pydicom.uid.generate_uid()
    folders = []
    for n in range(4):
        write_series(tmp_path / f"s{n}", count, study_uid=study_uid)
        folders.append(tmp_path / f"s{n}")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: storescu("127.0.0.1", node.port, [f], called_ae=NODE_AE), folders))
    return study_uid


def _counts(settings):
    with session_scope(settings.database_url) as s:
        return tuple(s.scalar(select(func.count(m.id))) for m in (Study, Series, Instance))


@pytest.mark.slow
def test_two_listener_processes_share_the_port(settings, tmp_path):
    node = StorageSCP(settings, processes=2)
    node.start()
    port = node.port
    try:
        assert len(node._children) == 1 and node._children[0].is_alive()
        _send_four_series_at_once(node, tmp_path)
        assert _counts(settings) == (1, 4, 24)
    finally:
        node.stop()
    assert node._children == []
    with socket.socket() as s:  # nobody listens any more
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.slow
def test_maximum_associations_holds_for_the_node_not_per_process(settings_factory):
    settings = settings_factory(node={"maximum_associations": 1})
    with StorageSCP(settings, processes=2) as node:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert held.is_established
        try:
            for _ in range(6):  # connections land on either process
                proc = echoscu("127.0.0.1", node.port, called_ae=NODE_AE)
                assert proc.returncode != 0
                assert "Local Limit Exceeded" in proc.stdout + proc.stderr
        finally:
            held.release()
        assert echoscu("127.0.0.1", node.port, called_ae=NODE_AE).returncode == 0


@pytest.mark.postgres
def test_concurrent_associations_on_postgresql(postgres_url, tmp_path):
    upgrade(postgres_url)
    settings = make_settings(tmp_path / "data", postgres_url)
    with StorageSCP(settings) as node:
        _send_four_series_at_once(node, tmp_path)
        folders = [tmp_path / f"s{n}" for n in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # all of it again: duplicates
            list(pool.map(lambda f: storescu("127.0.0.1", node.port, [f], called_ae=NODE_AE), folders))
    assert _counts(settings) == (1, 4, 24)
    with session_scope(settings.database_url) as s:
        assert set(s.scalars(select(Instance.duplicate_count)).all()) == {1}


@pytest.mark.slow
def test_associations_are_spread_evenly_over_the_listener_processes(settings):
    """The accepting process gives each connection to the process with the fewest in progress,
    so two associations at once run in two processes (not both in one, as SO_REUSEPORT's
    hashing may do)."""
    import time

    with StorageSCP(settings, processes=2) as node:
        loads = node._acceptor._loads._array
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", node.port, ae_title=NODE_AE) for _ in range(2)]
        try:
            assert all(a.is_established for a in held)
            assert list(loads) == [1, 1]
            assert all(a.send_c_echo().Status == 0 for a in held)
        finally:
            for a in held:
                a.release()
        deadline = time.monotonic() + 10
        while list(loads) != [0, 0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(loads) == [0, 0]


@pytest.mark.slow
def test_connections_for_a_dead_listener_process_are_served_by_the_acceptor(settings):
    """A listener process killed by the system: the hand-over to it fails and the accepting
    process serves the connection itself; its load slot is given back."""
    import os
    import signal
    import time

    with StorageSCP(settings, processes=2) as node:
        loads = node._acceptor._loads._array
        child = node._children[0]
        os.kill(child.pid, signal.SIGKILL)
        child.join(timeout=10)
        with socket.create_connection(("127.0.0.1", node.port)):  # keeps the acceptor's slot busy
            deadline = time.monotonic() + 5
            while list(loads) != [1, 0] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert list(loads) == [1, 0]
            proc = echoscu("127.0.0.1", node.port, called_ae=NODE_AE)  # goes to slot 1 first
            assert proc.returncode == 0, proc.stdout + proc.stderr
        deadline = time.monotonic() + 10
        while list(loads) != [0, 0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(loads) == [0, 0]
