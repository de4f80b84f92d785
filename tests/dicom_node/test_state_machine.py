"""The node's Upper Layer state machine (PS3.8 9.2), cell by cell and over a real socket.

In the manner of pynetdicom's own ``test_fsm.py``: every (state, event) pair of Table 9-10 is
put to the node's :class:`~dicom_node.upper_layer.AcceptorAssociation` (one end of a socket
pair, the test holding the other as the peer), and what it sends, the state it ends in and
whether it closes the connection are checked against what PS3.8 Tables 9-6 to 9-9 say of that
cell's action. The expectations are written here independently of the table in
``dicom_node/upper_layer.py``; the table itself is also compared with pynetdicom's
transcription of Table 9-10, a third reading of the standard.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from pynetdicom.fsm import TRANSITION_TABLE as PYNETDICOM_TABLE
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import ImplementationClassUIDNotification, ImplementationVersionNameNotification
from pynetdicom.sop_class import Verification

from common.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_node.policy import ACCEPT, AssociationDecision
from dicom_node.upper_layer import (
    ACTIONS,
    EVENTS,
    STATES,
    TRANSITIONS,
    AcceptorAssociation,
    InvalidEventError,
)
from dicom_node.scp import supported_contexts
from tests.faults.malformed import associate_rq

from .test_upper_layer import _command, _pdu, _pdv

NODE_AE = "MEDREGA"
ABORT = _pdu(0x07, b"\x00\x00\x00\x00")
RELEASE_RQ = _pdu(0x05, b"\x00\x00\x00\x00")
RELEASE_RP = _pdu(0x06, b"\x00\x00\x00\x00")


class _User:
    """A ServiceUser that records what the state machine told it."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.calls: list[str] = []

    def associate(self, association, request):
        self.calls.append("associate")
        return ACCEPT if self.accept else AssociationDecision(False, 0x01, 0x01, 0x03, "not listed")

    def established(self, association) -> None:
        self.calls.append("established")

    def parse_head(self, association, command, head):
        return None

    def store(self, association, request) -> int:
        self.calls.append("store")
        return 0

    def closed(self, association, how: str) -> None:
        self.calls.append(f"closed:{how}")


def _association(tmp_path: Path, user: _User | None = None, **timeouts: float) -> tuple[AcceptorAssociation, socket.socket]:
    ours, peer = socket.socketpair()
    peer.settimeout(5)
    association = AcceptorAssociation(
        ours, ("192.0.2.1", 104), user or _User(),
        supported_contexts=supported_contexts(), incoming=tmp_path, maximum_pdu_size=0,
        acse_timeout=timeouts.get("acse", 5), dimse_timeout=timeouts.get("dimse", 5),
        network_timeout=timeouts.get("network", 5),
    )
    return association, peer


def _received(peer: socket.socket) -> tuple[list[bytes], bool]:
    """The PDUs the node sent (whole), and whether it closed the connection: the actions send
    and close before ``fire`` returns, so what is not in the socket now was not done."""
    peer.setblocking(False)
    data = b""
    closed = False
    try:
        while True:
            chunk = peer.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    except BlockingIOError:
        pass
    except ConnectionResetError:
        closed = True
    pdus = []
    while len(data) >= 6:
        length = struct.unpack(">I", data[2:6])[0]
        pdus.append(data[:6 + length])
        data = data[6 + length:]
    return pdus, closed


def _decoded_rq():
    from pynetdicom.pdu import A_ASSOCIATE_RQ

    pdu = A_ASSOCIATE_RQ()
    pdu.decode(associate_rq(NODE_AE, "PEER"))
    return pdu.to_primitive()


def _prepare(association: AcceptorAssociation, state: str, event: str, peer: socket.socket) -> bytes:
    """Put the association in ``state`` with what the cell's action needs; the event's data."""
    association.state = state
    association._primitive = _decoded_rq()
    association._protocol_version = 1
    association._decision = AssociationDecision(False, 0x01, 0x01, 0x03, "test")
    association.accepted = {1: (Verification, "1.2.840.10008.1.2")}
    if event == "Evt10":  # DT-2 reads the P-DATA-TF body from the connection
        body = _pdv(1, 0x03, _command(Verification, 0x0030, 7, False))
        association._pdu_length = len(body)
        peer.sendall(body)
    if event == "Evt9":
        return b"\x04\x00\x00\x00\x00\x02\xaa\xbb"  # a P-DATA-TF PDU to send
    return b""


#: PS3.8 Tables 9-6 to 9-9, what each action does that the peer can see: (PDU type sent or
#: None, connection closed, next state). Actions of a requestor raise InvalidEventError.
_OBSERVED = {
    "AE-5": (None, False, "Sta2"),
    "AE-6": (None, False, "Sta3"),  # a request the provider can accept: indication to the user
    "AE-7": (0x02, False, "Sta6"),
    "AE-8": (0x03, False, "Sta13"),
    "DT-1": (0x04, False, "Sta6"),
    "DT-2": (0x04, False, "Sta6"),  # the C-ECHO-RQ it indicates is answered (Evt9, DT-1)
    "AR-2": (None, False, "Sta8"),
    "AR-4": (0x06, False, "Sta13"),
    "AR-5": (None, True, "Sta1"),
    "AR-7": (0x04, False, "Sta8"),
    "AA-1": (0x07, False, "Sta13"),
    "AA-2": (None, True, "Sta1"),
    "AA-3": (None, True, "Sta1"),
    "AA-4": (None, True, "Sta1"),
    "AA-5": (None, True, "Sta1"),
    "AA-6": (None, False, "Sta13"),
    "AA-7": (0x07, False, "Sta13"),
    "AA-8": (0x07, False, "Sta13"),
}
_REQUESTOR_ONLY = {"AE-1", "AE-2", "AE-3", "AE-4", "AR-1", "AR-3", "AR-6", "AR-8", "AR-9", "AR-10"}


def test_the_table_is_ps3_8_table_9_10():
    """The node's table against pynetdicom's transcription of the same table."""
    assert TRANSITIONS == {(state, event): action for (event, state), action in PYNETDICOM_TABLE.items()}
    assert set(ACTIONS) == set(_OBSERVED) | _REQUESTOR_ONLY
    assert len(STATES) == 13 and len(EVENTS) == 19


@pytest.mark.parametrize("event", list(EVENTS))
@pytest.mark.parametrize("state", list(STATES))
def test_every_state_event_pair(tmp_path, state, event):
    association, peer = _association(tmp_path)
    user = association.user
    data = _prepare(association, state, event, peer)
    action = TRANSITIONS.get((state, event))
    try:
        if action is None or action in _REQUESTOR_ONLY:
            with pytest.raises(InvalidEventError):
                association.fire(event, data)
            assert association.state == state, "a refused event changes nothing"
            assert _received(peer) == ([], False)
            return
        association.fire(event, data)
        sent_type, closes, next_state = _OBSERVED[action]
        assert association.state == next_state
        assert next_state in ACTIONS[action][1]
        pdus, closed = _received(peer)
        assert closed == closes
        assert [pdu[0] for pdu in pdus] == ([] if sent_type is None else [sent_type])
        if action in ("AA-8", "AA-7"):
            assert pdus[0][8] == 0x02, "A-ABORT source: service-provider"
        if action == "AA-1" and state != "Sta2":
            assert pdus[0][8] == 0x00, "A-ABORT source: service-user (the node asked for it)"
        if action == "AE-7":
            ac = A_ASSOCIATE_AC()
            ac.decode(pdus[0])
            items = ac.to_primitive().user_information
            assert [i.implementation_class_uid for i in items if isinstance(i, ImplementationClassUIDNotification)] \
                == [IMPLEMENTATION_CLASS_UID]
            assert [i.implementation_version_name for i in items
                    if isinstance(i, ImplementationVersionNameNotification)] == [IMPLEMENTATION_VERSION_NAME]
            assert user.calls == ["established"]
        if action == "DT-2":  # the C-ECHO-RQ was answered: C-ECHO-RSP, status (its last element) success
            assert struct.unpack_from("<HHIH", pdus[0], len(pdus[0]) - 10) == (0x0000, 0x0900, 2, 0x0000)
        if next_state in ("Sta1", "Sta13") and state not in ("Sta1", "Sta13"):
            assert user.calls[-1].startswith("closed:"), "the user learns that the association ended"
    finally:
        association._close()
        peer.close()


def test_a_request_the_provider_cannot_accept_is_rejected_by_ae_6(tmp_path):
    """AE-6, its other branch: a protocol version without bit 0 (PS3.8 9.3.2) is rejected
    (A-ASSOCIATE-RJ, ARTIM started: Sta13) without asking the user."""
    association, peer = _association(tmp_path)
    association.state = "Sta2"
    association._primitive = _decoded_rq()
    association._protocol_version = 2
    association.fire("Evt6")
    assert association.state == "Sta13"
    pdus, closed = _received(peer)
    assert [p[0] for p in pdus] == [0x03] and not closed
    assert association.user.calls == ["closed:rejected"]


# -- sequences over a real connection: the node's thread runs the machine ---------------------------
class _Peer:
    """The test's end of a connection whose other end is served by ``AcceptorAssociation.run``."""

    def __init__(self, tmp_path: Path, **timeouts: float) -> None:
        self.user = _User()
        self.association, self.sock = _association(tmp_path, self.user, **timeouts)
        self.changes: list[tuple[str, str, str]] = []
        fire = self.association.fire

        def recording_fire(event: str, data: bytes = b"") -> None:
            before = self.association.state
            fire(event, data)
            self.changes.append((before, event, self.association.state))

        self.association.fire = recording_fire  # type: ignore[method-assign]  # records each transition
        self.thread = threading.Thread(target=self.association.run, daemon=True)
        self.thread.start()

    def pdu(self) -> bytes:
        self.sock.settimeout(5)
        head = b""
        while len(head) < 6:
            head += self.sock.recv(6 - len(head))
        body = b""
        length = struct.unpack(">I", head[2:6])[0]
        while len(body) < length:
            body += self.sock.recv(length - len(body))
        return head + body

    def ended(self, timeout: float = 5) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def _states(changes: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(state, event) for state, event, _ in changes]


def test_association_release_sequence(tmp_path):
    """Evt5 AE-5, Evt6 AE-6, Evt7 AE-7, Evt10 DT-2 (C-ECHO) with Evt9 DT-1, Evt12 AR-2, Evt14
    AR-4, then the requestor closes: Evt17 AR-5."""
    peer = _Peer(tmp_path)
    peer.sock.sendall(associate_rq(NODE_AE, "PEER"))
    assert peer.pdu()[0] == 0x02
    peer.sock.sendall(_pdu(0x04, _pdv(1, 0x03, _command(Verification, 0x0030, 1, False))))
    assert peer.pdu()[0] == 0x04
    peer.sock.sendall(RELEASE_RQ)
    assert peer.pdu() == RELEASE_RP
    peer.sock.close()
    assert peer.ended()
    assert _states(peer.changes) == [
        ("Sta1", "Evt5"), ("Sta2", "Evt6"), ("Sta3", "Evt7"), ("Sta6", "Evt9"), ("Sta6", "Evt10"),
        ("Sta6", "Evt12"), ("Sta8", "Evt14"), ("Sta13", "Evt17"),
    ]
    assert peer.user.calls == ["associate", "established", "closed:released"]


def test_sta13_ignores_p_data_and_aborts_again_on_an_association_request(tmp_path):
    """After its A-ABORT (AA-8) the node waits for the close: a P-DATA-TF is ignored (AA-6), an
    A-ASSOCIATE-RQ answered with A-ABORT (AA-7), an A-ABORT closes (AA-2)."""
    peer = _Peer(tmp_path)
    peer.sock.sendall(associate_rq(NODE_AE, "PEER"))
    assert peer.pdu()[0] == 0x02
    peer.sock.sendall(RELEASE_RP)  # Evt13 in Sta6: AA-8
    abort = peer.pdu()
    assert abort[0] == 0x07 and abort[8:10] == bytes((0x02, 0x02))  # provider, unexpected PDU
    peer.sock.sendall(_pdu(0x04, _pdv(1, 0x03, b"\x00" * 10)))
    peer.sock.sendall(associate_rq(NODE_AE, "PEER"))
    assert peer.pdu()[0] == 0x07
    peer.sock.sendall(ABORT)
    assert peer.ended()
    assert _states(peer.changes)[3:] == [("Sta6", "Evt13"), ("Sta13", "Evt10"), ("Sta13", "Evt6"), ("Sta13", "Evt16")]
    assert [c[2] for c in peer.changes[3:]] == ["Sta13", "Sta13", "Sta13", "Sta1"]


def test_artim_closes_a_connection_whose_peer_never_closes(tmp_path):
    """Evt18 in Sta13: after its A-ASSOCIATE-RJ the node closes when ARTIM expires (AA-2)."""
    peer = _Peer(tmp_path, acse=1)
    peer.user.accept = False
    peer.sock.sendall(associate_rq(NODE_AE, "PEER"))
    assert peer.pdu()[0] == 0x03
    started = time.monotonic()
    from dicom_node.scp import DEADLINE_TICK_S

    while peer.thread.is_alive() and time.monotonic() - started < 5:  # the node's deadline thread
        peer.association.check_deadline(time.monotonic())
        time.sleep(DEADLINE_TICK_S)
    assert peer.ended(0)
    assert 0.8 < time.monotonic() - started < 3
    assert _states(peer.changes)[-2:] == [("Sta3", "Evt8"), ("Sta13", "Evt18")]
    assert peer.sock.recv(1) == b""


def test_a_peer_abort_before_the_association_request_closes_silently(tmp_path):
    """Evt16 in Sta2: AA-2, nothing sent."""
    peer = _Peer(tmp_path)
    peer.sock.sendall(ABORT)
    assert peer.ended()
    assert _states(peer.changes) == [("Sta1", "Evt5"), ("Sta2", "Evt16")]
    assert peer.sock.recv(1) == b""


def test_a_send_that_times_out_while_releasing_is_the_nodes_abort(tmp_path):
    """A timeout in Sta8 (the A-RELEASE-RP cannot be sent) is the node's A-ABORT request
    (Evt15, AA-1), not an event the table leaves blank there."""
    association, peer = _association(tmp_path)
    association.state = "Sta8"
    association._expired = True
    assert association._transport_event(TimeoutError()) == "Evt15"
    association.fire("Evt15")
    assert association.state == "Sta13"
    association._close()
    peer.close()
