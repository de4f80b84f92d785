"""The acceptor side of the DICOM Upper Layer protocol for the node (PS3.8 7, 9) over TCP/TLS.

One :class:`AcceptorAssociation` runs one connection in one thread, from the transport
connection to its close. It is PS3.8's state machine (9.2): :data:`TRANSITIONS` is Table 9-10
written out (states Sta1-Sta13, events Evt1-Evt19, actions AE-n, DT-n, AR-n, AA-n of Tables
9-6 to 9-9), and every event, whether a PDU read from the socket, the node's own answer or a
timer, goes through :meth:`AcceptorAssociation.fire`, which looks the action up in the table and
runs it. A (state, event) pair the table leaves blank raises :class:`InvalidEventError`.

The node only accepts associations and never releases one itself, so the states of a requestor
and of a release collision (Sta4, Sta5, Sta7, Sta9-Sta12) are never entered; their cells are in
the table all the same, and the actions only a requestor performs (:data:`REQUESTOR_ACTIONS`)
raise :class:`InvalidEventError` naming the action.

Data transfer streams: the data set fragments of each C-STORE-RQ go to a file in ``incoming/``
as they arrive (hashed on the way: the SHA-256 of the data set alone, not of the File Meta),
and the finished file is handed to the :class:`ServiceUser`, whose status is sent back.

Deadlines bound the total time, not the time between two ``recv`` (a peer sending a byte a
second would otherwise hold a connection for good):

* ``acse_timeout``: from the TCP accept (TLS handshake included) to the A-ASSOCIATE-RQ received
  whole; it is also the ARTIM timer (PS3.8 9.1.5) of Sta2 and Sta13.
* ``dimse_timeout`` plus the PDU's length at ``minimum_transfer_rate`` bytes/s: for each
  P-DATA-TF PDU, from its header; and ``dimse_timeout`` between the PDUs of one message.
* ``network_timeout``: an association with no PDU for this long is idle and aborted.

They are enforced by :meth:`AcceptorAssociation.check_deadline`, which the node calls a few
times a second from one thread for all its connections: when a deadline passes it shuts the
socket's receiving side, so a blocked read ends at once (also inside a TLS handshake).

Disk space: before a data set is written and again every :data:`DISK_LOOK_BYTES` (or when the
last look's margin is spent), the free space of ``incoming/`` is compared with
``minimum_free_bytes``. A data set that would cross that floor, or whose write fails with ENOSPC
or EDQUOT, is refused at once with 0xA700 (PS3.4 B.2.3): the partial file is removed, the
C-STORE-RSP is sent immediately, and the rest of that data set is read and dropped, so the
association goes on.

Why not pynetdicom's ``AE``: its DUL and DIMSE layers are two threads per association that poll
queues with 1 ms sleeps and build Python objects for every PDU, about 2.5-4 ms of CPU per small
instance before the node does any work of its own (``docs/benchmarks.md``). What is not trivial
is still pynetdicom's: the A-ASSOCIATE PDUs are encoded and decoded by :mod:`pynetdicom.pdu` and
presentation contexts negotiated by :func:`pynetdicom.presentation.negotiate_as_acceptor`.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import logging
import math
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom.uid import UID
from pynetdicom._globals import APPLICATION_CONTEXT_NAME
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from common.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

from .dimse import (
    C_CANCEL_RQ,
    C_STORE_RQ,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_SPOOL_ERROR,
    Command,
    CommandSetError,
    decode_command,
    encode_response,
    request_status,
)
from .policy import AssociationDecision
from .spool import free_disk_mb

__all__ = [
    "STATES",
    "EVENTS",
    "ACTIONS",
    "TRANSITIONS",
    "REQUESTOR_ACTIONS",
    "InvalidEventError",
    "UpperLayerError",
    "AssociationRequest",
    "StoreRequest",
    "ServiceUser",
    "AcceptorAssociation",
]

LOGGER = logging.getLogger(__name__)

# -- PS3.8 9.2: the state machine ------------------------------------------------------------------
#: PS3.8 Table 9-1
STATES: dict[str, str] = {
    "Sta1": "Idle",
    "Sta2": "Transport connection open (awaiting A-ASSOCIATE-RQ PDU)",
    "Sta3": "Awaiting local A-ASSOCIATE response primitive (from local user)",
    "Sta4": "Awaiting transport connection opening to complete (from local transport service)",
    "Sta5": "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU",
    "Sta6": "Association established and ready for data transfer",
    "Sta7": "Awaiting A-RELEASE-RP PDU",
    "Sta8": "Awaiting local A-RELEASE response primitive (from local user)",
    "Sta9": "Release collision requestor side; awaiting A-RELEASE response (from local user)",
    "Sta10": "Release collision acceptor side; awaiting A-RELEASE-RP PDU",
    "Sta11": "Release collision requestor side; awaiting A-RELEASE-RP PDU",
    "Sta12": "Release collision acceptor side; awaiting A-RELEASE response primitive (from local user)",
    "Sta13": "Awaiting Transport Connection Close Indication (Association no longer exists)",
}

#: PS3.8 Table 9-10, the rows (events)
EVENTS: dict[str, str] = {
    "Evt1": "A-ASSOCIATE request (local user)",
    "Evt2": "Transport connect confirmation (local transport service)",
    "Evt3": "A-ASSOCIATE-AC PDU (received on transport connection)",
    "Evt4": "A-ASSOCIATE-RJ PDU (received on transport connection)",
    "Evt5": "Transport connection indication (local transport service)",
    "Evt6": "A-ASSOCIATE-RQ PDU (received on transport connection)",
    "Evt7": "A-ASSOCIATE response primitive (accept)",
    "Evt8": "A-ASSOCIATE response primitive (reject)",
    "Evt9": "P-DATA request primitive",
    "Evt10": "P-DATA-TF PDU (received on transport connection)",
    "Evt11": "A-RELEASE request primitive",
    "Evt12": "A-RELEASE-RQ PDU (received on transport connection)",
    "Evt13": "A-RELEASE-RP PDU (received on transport connection)",
    "Evt14": "A-RELEASE response primitive",
    "Evt15": "A-ABORT request primitive",
    "Evt16": "A-ABORT PDU (received on transport connection)",
    "Evt17": "Transport connection closed indication (local transport service)",
    "Evt18": "ARTIM timer expired (Association reject/release timer)",
    "Evt19": "Unrecognized or invalid PDU received",
}

#: PS3.8 Tables 9-6 to 9-9: action -> (what it does, the state(s) it leads to)
ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "AE-1": ("Issue TRANSPORT CONNECT request primitive to local transport service", ("Sta4",)),
    "AE-2": ("Send A-ASSOCIATE-RQ PDU", ("Sta5",)),
    "AE-3": ("Issue A-ASSOCIATE confirmation (accept) primitive", ("Sta6",)),
    "AE-4": ("Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection", ("Sta1",)),
    "AE-5": ("Issue Transport connection response primitive; start ARTIM timer", ("Sta2",)),
    "AE-6": ("Stop ARTIM timer and if A-ASSOCIATE-RQ acceptable by service-provider: issue "
             "A-ASSOCIATE indication primitive (Sta3); otherwise issue A-ASSOCIATE-RJ PDU and start "
             "ARTIM timer (Sta13)", ("Sta3", "Sta13")),
    "AE-7": ("Send A-ASSOCIATE-AC PDU", ("Sta6",)),
    "AE-8": ("Send A-ASSOCIATE-RJ PDU and start ARTIM timer", ("Sta13",)),
    "DT-1": ("Send P-DATA-TF PDU", ("Sta6",)),
    "DT-2": ("Send P-DATA indication primitive", ("Sta6",)),
    "AR-1": ("Send A-RELEASE-RQ PDU", ("Sta7",)),
    "AR-2": ("Issue A-RELEASE indication primitive", ("Sta8",)),
    "AR-3": ("Issue A-RELEASE confirmation primitive, and close transport connection", ("Sta1",)),
    "AR-4": ("Issue A-RELEASE-RP PDU and start ARTIM timer", ("Sta13",)),
    "AR-5": ("Stop ARTIM timer", ("Sta1",)),
    "AR-6": ("Issue P-DATA indication", ("Sta7",)),
    "AR-7": ("Issue P-DATA-TF PDU", ("Sta8",)),
    "AR-8": ("Issue A-RELEASE indication (release collision): Sta9 if association-requestor, "
             "else Sta10", ("Sta9", "Sta10")),
    "AR-9": ("Send A-RELEASE-RP PDU", ("Sta11",)),
    "AR-10": ("Issue A-RELEASE confirmation primitive", ("Sta12",)),
    "AA-1": ("Send A-ABORT PDU (service-user source) and start (or restart if already started) "
             "ARTIM timer", ("Sta13",)),
    "AA-2": ("Stop ARTIM timer if running. Close transport connection", ("Sta1",)),
    "AA-3": ("Issue A-ABORT (service-user initiated) or A-P-ABORT (service-provider initiated) "
             "indication and close transport connection", ("Sta1",)),
    "AA-4": ("Issue A-P-ABORT indication primitive", ("Sta1",)),
    "AA-5": ("Stop ARTIM timer", ("Sta1",)),
    "AA-6": ("Ignore PDU", ("Sta13",)),
    "AA-7": ("Send A-ABORT PDU", ("Sta13",)),
    "AA-8": ("Send A-ABORT PDU (service-provider source), issue an A-P-ABORT indication, and "
             "start ARTIM timer", ("Sta13",)),
}

#: Actions only an association requestor performs: the node never does (they raise
#: InvalidEventError), so the states they lead to (Sta4, Sta5, Sta7, Sta9-Sta12) are never entered.
REQUESTOR_ACTIONS = frozenset({"AE-1", "AE-2", "AE-3", "AE-4", "AR-1", "AR-3", "AR-6", "AR-8", "AR-9", "AR-10"})

_ = ""  # a blank cell: the event cannot happen in that state
#: PS3.8 Table 9-10, one row per event, one column per state (Sta1 ... Sta13)
_TABLE_9_10: dict[str, tuple[str, ...]] = {
    #        Sta1    Sta2    Sta3    Sta4    Sta5    Sta6    Sta7     Sta8    Sta9    Sta10    Sta11   Sta12   Sta13
    "Evt1": ("AE-1", _, _, _, _, _, _, _, _, _, _, _, _),
    "Evt2": (_, _, _, "AE-2", _, _, _, _, _, _, _, _, _),
    "Evt3": (_, "AA-1", "AA-8", _, "AE-3", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-6"),
    "Evt4": (_, "AA-1", "AA-8", _, "AE-4", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-6"),
    "Evt5": ("AE-5", _, _, _, _, _, _, _, _, _, _, _, _),
    "Evt6": (_, "AE-6", "AA-8", _, "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-7"),
    "Evt7": (_, _, "AE-7", _, _, _, _, _, _, _, _, _, _),
    "Evt8": (_, _, "AE-8", _, _, _, _, _, _, _, _, _, _),
    "Evt9": (_, _, _, _, _, "DT-1", _, "AR-7", _, _, _, _, _),
    "Evt10": (_, "AA-1", "AA-8", _, "AA-8", "DT-2", "AR-6", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-6"),
    "Evt11": (_, _, _, _, _, "AR-1", _, _, _, _, _, _, _),
    "Evt12": (_, "AA-1", "AA-8", _, "AA-8", "AR-2", "AR-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-6"),
    "Evt13": (_, "AA-1", "AA-8", _, "AA-8", "AA-8", "AR-3", "AA-8", "AA-8", "AR-10", "AR-3", "AA-8", "AA-6"),
    "Evt14": (_, _, _, _, _, _, _, "AR-4", "AR-9", _, _, "AR-4", _),
    "Evt15": (_, _, "AA-1", "AA-2", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1", "AA-1", _),
    "Evt16": (_, "AA-2", "AA-3", _, "AA-3", "AA-3", "AA-3", "AA-3", "AA-3", "AA-3", "AA-3", "AA-3", "AA-2"),
    "Evt17": (_, "AA-5", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AR-5"),
    "Evt18": (_, "AA-2", _, _, _, _, _, _, _, _, _, _, "AA-2"),
    "Evt19": (_, "AA-1", "AA-8", _, "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-7"),
}
#: (state, event) -> action: PS3.8 Table 9-10 without its blank cells
TRANSITIONS: dict[tuple[str, str], str] = {
    (state, event): action
    for event, row in _TABLE_9_10.items()
    for state, action in zip(STATES, row, strict=True)
    if action
}
del _

# -- PDUs (PS3.8 9.3) ---------------------------------------------------------------------------------
A_ASSOCIATE_RQ_PDU = 0x01
A_ASSOCIATE_AC_PDU = 0x02
A_ASSOCIATE_RJ_PDU = 0x03
P_DATA_TF_PDU = 0x04
A_RELEASE_RQ_PDU = 0x05
A_RELEASE_RP_PDU = 0x06
A_ABORT_PDU = 0x07
#: the event each PDU type is (PS3.8 9.2.1); any other type is Evt19
_PDU_EVENTS = {
    A_ASSOCIATE_RQ_PDU: "Evt6", A_ASSOCIATE_AC_PDU: "Evt3", A_ASSOCIATE_RJ_PDU: "Evt4",
    P_DATA_TF_PDU: "Evt10", A_RELEASE_RQ_PDU: "Evt12", A_RELEASE_RP_PDU: "Evt13", A_ABORT_PDU: "Evt16",
}

# A-ABORT source and reason (PS3.8 9.3.8)
SOURCE_SERVICE_USER = 0x00
SOURCE_SERVICE_PROVIDER = 0x02
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_UNRECOGNIZED_PDU_PARAMETER = 0x04
ABORT_UNEXPECTED_PDU_PARAMETER = 0x05
ABORT_INVALID_PARAMETER = 0x06

#: An A-ASSOCIATE-RQ larger than this is refused (128 presentation contexts with every transfer
#: syntax of PS3.5 stay well under it); it bounds the memory a hostile peer can make us allocate.
MAXIMUM_REQUEST_PDU = 1 << 20
#: The other PDUs a peer may send besides P-DATA-TF have 4-byte bodies (PS3.8 9.3.6-9.3.8);
#: an A-ASSOCIATE-AC/RJ (never expected by an acceptor) is bounded like a request.
_FIXED_PDU_LENGTH = 4
#: Largest command set accepted (a C-STORE-RQ is about 150 bytes).
MAXIMUM_COMMAND_SET = 1 << 16
#: Free disk space is looked at again after this many bytes of one data set at the latest.
DISK_LOOK_BYTES = 64 << 20
_RECEIVE_BUFFER = 1 << 20
_FOREVER = math.inf

_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")


class InvalidEventError(RuntimeError):
    """An event in a state where PS3.8 Table 9-10 leaves the cell blank, or an action that only
    an association requestor performs: a defect of the node, never a peer's doing."""


class UpperLayerError(Exception):
    """The peer broke the Upper Layer protocol (Evt19); ``reason`` is the PS3.8 9.3.8 A-ABORT reason."""

    def __init__(self, message: str, reason: int = ABORT_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


class _ConnectionClosed(Exception):
    """The transport connection delivered no more bytes (closed by the peer, or its receiving
    side shut by :meth:`AcceptorAssociation.check_deadline` or :meth:`AcceptorAssociation.abort`)."""


@dataclass(frozen=True)
class AssociationRequest:
    """What the requestor asked for (PS3.8 7.1.1), for the association policy."""

    calling_ae_title: str
    called_ae_title: str
    peer_address: str


@dataclass
class StoreRequest:
    """One C-STORE-RQ whose data set has been received whole into ``path`` (PS3.7 9.3.1.1).

    ``path`` holds a DICOM file: preamble, File Meta Information (PS3.10 7.1) naming the accepted
    transfer syntax and the node's implementation, then the data set bytes exactly as received.
    ``sha256`` is of the data set alone (the bytes after the File Meta), so that a re-send is
    recognised whatever File Meta the node writes; ``size_bytes`` is of the whole file.
    """

    command: Command
    transfer_syntax_uid: str
    path: Path
    sha256: str
    size_bytes: int
    #: what :meth:`ServiceUser.parse_head` returned, if the data set was long enough for it
    early: object = None


class ServiceUser(Protocol):
    """The node's side of the association (the "local user" of PS3.8): policy, storage, logging."""

    def associate(self, association: "AcceptorAssociation", request: AssociationRequest) -> AssociationDecision:
        """Accept or reject an A-ASSOCIATE-RQ (the A-ASSOCIATE response primitive: Evt7 / Evt8)."""

    def established(self, association: "AcceptorAssociation") -> None:
        """The A-ASSOCIATE-AC has been sent (AE-7)."""

    def parse_head(self, association: "AcceptorAssociation", command: Command, head: bytes) -> object:
        """Look at the first ``head_bytes`` of a C-STORE data set's file (file meta included)
        while the rest is still arriving; the result comes back as ``StoreRequest.early``."""

    def store(self, association: "AcceptorAssociation", request: StoreRequest) -> int:
        """File ``request.path`` and return the C-STORE status; the file is the callee's."""

    def closed(self, association: "AcceptorAssociation", how: str) -> None:
        """The association no longer exists (Sta13 or Sta1): ``released``, ``aborted``,
        ``rejected`` or ``dropped``."""


class _DiskFloor:
    """Free space of the reception folder against ``minimum_free_bytes`` (0: no floor)."""

    def __init__(self, folder: Path, minimum_free_bytes: int) -> None:
        self.folder = folder
        self.minimum_free_bytes = minimum_free_bytes

    def margin(self) -> int:
        """Bytes that may be written before the floor is reached, at most
        :data:`DISK_LOOK_BYTES` (then it is looked at again); negative: under the floor."""
        if self.minimum_free_bytes <= 0:
            return DISK_LOOK_BYTES
        free = int(free_disk_mb(self.folder) * (1 << 20))
        return min(free - self.minimum_free_bytes, DISK_LOOK_BYTES)


class _DiskRefusal(Exception):
    """The data set cannot be written: the disk floor, ENOSPC or another write error."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Reception:
    """A C-STORE-RQ whose data set is arriving into ``path``."""

    command: Command
    context_id: int
    transfer_syntax_uid: str
    path: Path
    fd: int
    floor: _DiskFloor
    head_bytes: int = 0
    sha256: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    size: int = 0
    head: bytearray = field(default_factory=bytearray)
    early: object = None
    looked: bool = False
    #: bytes that may still be written before the free space is looked at again
    margin: int = 0
    #: set when the data set was refused while arriving (the file is gone then)
    refusal: _DiskRefusal | None = None

    def write_meta(self, meta: bytes) -> None:
        """The preamble and File Meta: in the file and the head, not in the data set hash."""
        self.head += meta[: self.head_bytes]
        self._write(meta)

    def write(self, chunk: memoryview | bytes) -> None:
        """A data set fragment; a refusal is recorded, never raised (the caller reads on)."""
        if self.refusal is not None:
            return
        try:
            self._write(chunk)
        except _DiskRefusal as exc:
            self.refusal = exc
            self.discard()
            return
        self.sha256.update(chunk)
        if len(self.head) < self.head_bytes:
            self.head += chunk[: self.head_bytes - len(self.head)]

    def _write(self, chunk: memoryview | bytes) -> None:
        n = len(chunk)
        self.margin -= n
        if self.margin < 0:
            self.margin = self.floor.margin() - n
            if self.margin < 0:
                raise _DiskRefusal(
                    f"free disk space in {self.floor.folder} would fall under node.minimum_free_disk_mb",
                    STATUS_OUT_OF_RESOURCES,
                )
        view = memoryview(chunk)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            status = STATUS_OUT_OF_RESOURCES if exc.errno in (errno.ENOSPC, errno.EDQUOT) else STATUS_SPOOL_ERROR
            raise _DiskRefusal(f"writing {self.path.name}: {exc.strerror}", status) from None
        self.size += n

    def discard(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        self.path.unlink(missing_ok=True)


class _Stream:
    """Buffered reads from a socket: exact-length headers, and data passed on in place."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray(_RECEIVE_BUFFER)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def _recv(self) -> None:
        n = self._sock.recv_into(self._view[self._end:])
        if n == 0:
            raise _ConnectionClosed()
        self._end += n

    def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (``n`` at most the buffer size)."""
        if self._end - self._start < n:
            if self._start:
                remaining = self._end - self._start
                self._buf[:remaining] = self._view[self._start:self._end]
                self._start, self._end = 0, remaining
            while self._end < n:
                self._recv()
        data = bytes(self._view[self._start:self._start + n])
        self._start += n
        return data

    def read_large(self, n: int) -> bytes:
        """Exactly ``n`` bytes, any size (an A-ASSOCIATE-RQ)."""
        parts, left = [], n
        while left:
            part = self.read(min(left, _RECEIVE_BUFFER // 2))
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def pass_on(self, n: int, sink: Callable[[memoryview], None]) -> None:
        """Hand the next ``n`` bytes to ``sink`` in pieces, without copying them."""
        while n:
            if self._start == self._end:
                self._start = self._end = 0
                self._recv()
            take = min(n, self._end - self._start)
            sink(self._view[self._start:self._start + take])
            self._start += take
            n -= take

    def drain(self) -> None:
        """Read and drop everything until the connection ends."""
        self._start = self._end = 0
        while True:
            self._recv()
            self._start = self._end = 0


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return _PDU_HEADER.pack(pdu_type, len(body)) + body


def _abort_pdu(source: int, reason: int) -> bytes:
    return _pdu(A_ABORT_PDU, bytes((0, 0, source, reason)))


_RELEASE_RP = _pdu(A_RELEASE_RP_PDU, b"\x00\x00\x00\x00")


def _discard(_chunk: memoryview) -> None:
    return None


class AcceptorAssociation:
    """One connection accepted by the node, run by :meth:`run` in the connection's thread.

    ``supported_contexts`` are the presentation contexts the node accepts (abstract syntax and
    transfer syntaxes in order of preference); ``maximum_pdu_size`` is the Maximum Length
    announced in the A-ASSOCIATE-AC (0: no limit, PS3.7 D.1). Once ``head_bytes`` of a data set's
    file are written and more fragments are due, :meth:`ServiceUser.parse_head` looks at them, so
    that parsing overlaps with the transfer of the rest (the pixel data). Timeouts in seconds,
    ``minimum_transfer_rate`` in bytes per second (see the module's docstring);
    ``minimum_free_bytes`` is the disk floor of ``incoming``.
    """

    def __init__(
        self,
        sock: socket.socket,
        address: tuple[str, int],
        user: ServiceUser,
        *,
        supported_contexts: list[PresentationContext],
        incoming: Path,
        maximum_pdu_size: int,
        acse_timeout: float,
        dimse_timeout: float,
        network_timeout: float,
        minimum_transfer_rate: float = 64_000.0,
        minimum_free_bytes: int = 0,
        head_bytes: int = 0,
    ) -> None:
        self.sock = sock
        self.peer_address = str(address[0])
        self.user = user
        self.supported_contexts = supported_contexts
        self.incoming = incoming
        self.maximum_pdu_size = maximum_pdu_size
        self.acse_timeout = acse_timeout
        self.dimse_timeout = dimse_timeout
        self.network_timeout = network_timeout
        self.minimum_transfer_rate = minimum_transfer_rate
        # a fallback for sends (and any read the deadlines below somehow miss)
        sock.settimeout(max(acse_timeout, dimse_timeout, network_timeout) + 5.0)
        #: size of the head handed to ServiceUser.parse_head (0: never)
        self.head_bytes = head_bytes
        self.request: AssociationRequest | None = None
        #: accepted presentation context ID -> (abstract syntax UID, transfer syntax UID)
        self.accepted: dict[int, tuple[str, str]] = {}
        self.stats: dict[str, int] = {}
        #: PS3.8 9.2 state; only :meth:`fire` changes it
        self.state = "Sta1"
        #: monotonic time by which the current wait must end (see check_deadline)
        self.deadline = _FOREVER
        self._floor = _DiskFloor(incoming, minimum_free_bytes)
        self._stream = _Stream(sock)
        self._send_lock = threading.Lock()
        self._spare: Future[tuple[int, str]] | None = None
        self._actions: dict[str, Callable[[bytes], str]] = {
            name: functools.partial(self._requestor_only, name) if name in REQUESTOR_ACTIONS
            else getattr(self, "_" + name.lower().replace("-", "_"))
            for name in ACTIONS
        }
        # set by another thread: a deadline passed / the node is stopping
        self._expired = False
        self._stopping = False
        # the PDU that caused the event being handled
        self._event = "Evt5"
        self._pdu_length = 0
        self._protocol_version = 0
        self._abort_reason = ABORT_NOT_SPECIFIED
        #: what was wrong with the PDU that is answered with A-ABORT (for the log)
        self._detail = ""
        self._decision: AssociationDecision | None = None
        self._primitive: A_ASSOCIATE | None = None
        #: False once bytes of a PDU were left unread: the stream no longer has PDU boundaries
        self._framed = True
        self._how = "dropped"
        self._reported = False
        # DIMSE message being received (PS3.7 6.3.1, PS3.8 E.2)
        self._command_parts: list[bytes] = []
        self._command_size = 0
        self._command_context = 0
        self._pending: Command | None = None
        self._reception: _Reception | None = None
        #: the pending message was answered early (refused): its data set is read and dropped
        self._answered = False

    @property
    def calling_ae_title(self) -> str:
        return self.request.calling_ae_title if self.request else ""

    # -- the state machine -------------------------------------------------------------------------
    def fire(self, event: str, data: bytes = b"") -> None:
        """Run the action PS3.8 Table 9-10 gives for ``event`` in the current state; the action
        returns the next state. ``data``: the PDU body received or the PDU to send."""
        action = TRANSITIONS.get((self.state, event))
        if action is None:
            raise InvalidEventError(f"{EVENTS.get(event, event)} cannot happen in {self.state}")
        self._event = event
        self.state = self._actions[action](data)
        if self.state in ("Sta13", "Sta1") and not self._reported:
            self._report_closed()

    def run(self) -> None:
        """Serve the connection until it is closed (Sta1); never raises."""
        try:
            self.fire("Evt5")
            while self.state != "Sta1":
                try:
                    event, data = self._next_event()
                    self.fire(event, data)
                except UpperLayerError as exc:  # found inside a P-DATA-TF PDU (DT-2)
                    self._framed = False
                    self._abort_reason = exc.reason
                    self._detail = str(exc)
                    self.fire("Evt19")
                except (_ConnectionClosed, ssl.SSLError, OSError) as exc:  # while reading or sending
                    self._framed = False
                    self.fire(self._transport_event(exc))
        except Exception:  # a defect here must end one connection, never the node
            LOGGER.exception("association from %s (%s) failed in %s", self.calling_ae_title or "?",
                             self.peer_address, self.state)
            self._send_quietly(_abort_pdu(SOURCE_SERVICE_PROVIDER, ABORT_NOT_SPECIFIED))
            self._how = "aborted"
        finally:
            self.state = "Sta1"
            self.deadline = _FOREVER
            self._drop_reception()
            self._close()
            self._drop_spare()
            if not self._reported:
                self._report_closed()

    def _report_closed(self) -> None:
        self._reported = True
        try:
            self.user.closed(self, self._how)
        except Exception:
            LOGGER.exception("association close handler failed")

    def _next_event(self) -> tuple[str, bytes]:
        """The next event: from the local user in Sta3 and Sta8, else from the connection."""
        state = self.state
        if state == "Sta3":
            return self._association_response(), b""
        if state == "Sta8":
            self._drop_reception()
            return "Evt14", b""  # the node always agrees to release
        try:
            if not self._framed:  # after an abort in the middle of a PDU: nothing is a PDU any more
                self._stream.drain()
            if state == "Sta2" and isinstance(self.sock, ssl.SSLSocket):
                self.sock.do_handshake()
            pdu_type, length = _PDU_HEADER.unpack(self._stream.read(6))
            event = _PDU_EVENTS.get(pdu_type)
            if event is None:
                self._framed = False
                self._abort_reason = ABORT_UNRECOGNIZED_PDU
                self._detail = f"PDU type 0x{pdu_type:02X}"
                return "Evt19", b""
            if event == "Evt10":
                self._pdu_length = length
                if state == "Sta6":
                    return event, b""  # DT-2 reads the body as it arrives
                if state == "Sta13":
                    self._stream.pass_on(length, _discard)  # AA-6 ignores it
                else:
                    self._framed = False
                self._abort_reason = ABORT_UNEXPECTED_PDU
                return event, b""
            limit = MAXIMUM_REQUEST_PDU if pdu_type <= A_ASSOCIATE_RJ_PDU else _FIXED_PDU_LENGTH
            if length > limit or (pdu_type > A_ASSOCIATE_RJ_PDU and length != _FIXED_PDU_LENGTH):
                self._framed = False
                self._abort_reason = ABORT_INVALID_PARAMETER
                self._detail = f"PDU type 0x{pdu_type:02X} of {length} bytes"
                return "Evt19", b""
            body = self._stream.read_large(length)
        except (_ConnectionClosed, ssl.SSLError, OSError) as exc:
            return self._transport_event(exc), b""
        self._abort_reason = ABORT_UNEXPECTED_PDU
        self._detail = ""
        if event == "Evt6" and state == "Sta2":
            try:
                primitive = A_ASSOCIATE_RQ()
                primitive.decode(_PDU_HEADER.pack(pdu_type, length) + body)
                self._primitive = primitive.to_primitive()
                self._protocol_version = int(primitive.protocol_version)
            except Exception as exc:  # pynetdicom raises many types for a malformed PDU
                self._detail = f"malformed A-ASSOCIATE-RQ ({type(exc).__name__}: {exc})"
                self._abort_reason = ABORT_INVALID_PARAMETER
                return "Evt19", b""
        return event, body

    def _transport_event(self, exc: BaseException) -> str:
        """What a read that ended without a PDU means: a deadline (ARTIM in Sta2 and Sta13, the
        node's own A-ABORT request in Sta6), the node stopping, or the peer closing."""
        if self._expired or self._stopping or isinstance(exc, (socket.timeout, TimeoutError)):
            if self.state in ("Sta2", "Sta13"):
                return "Evt18"
            LOGGER.warning("association from %s (%s) aborted in %s: %s", self.calling_ae_title,
                           self.peer_address, self.state, "node stopping" if self._stopping else "deadline passed")
            self._framed = False
            return "Evt15"  # the node's own A-ABORT request (AA-1), in any state that has one
        if self.state == "Sta6" and not isinstance(exc, _ConnectionClosed):
            LOGGER.warning("association from %s (%s): connection lost (%s)", self.calling_ae_title,
                           self.peer_address, exc or type(exc).__name__)
        return "Evt17"

    def _association_response(self) -> str:
        """The local user's A-ASSOCIATE response (Evt7 accept, Evt8 reject)."""
        assert self.request is not None
        decision = self.user.associate(self, self.request)
        self._decision = decision
        return "Evt7" if decision.accepted else "Evt8"

    # -- deadlines (called from another thread) ----------------------------------------------------
    def check_deadline(self, now: float) -> bool:
        """End the current wait if its deadline has passed: the socket's receiving side is shut,
        so a blocked read returns at once; the association thread then sends what the state
        machine says (A-ABORT in Sta6) and closes. True when it did."""
        if now <= self.deadline or self._expired:
            return False
        self._expired = True
        self._shut_receiving()
        return True

    def abort(self) -> None:
        """The node is stopping: the association thread sends A-ABORT (Evt15) and closes."""
        self._stopping = True
        self._shut_receiving()

    def _shut_receiving(self) -> None:
        try:  # the plain socket's shutdown: an SSLSocket's own would drop its TLS state
            socket.socket.shutdown(self.sock, socket.SHUT_RD)
        except OSError:
            pass

    def _wait(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    # -- Association establishment (PS3.8 Table 9-6) -----------------------------------------------
    def _requestor_only(self, action: str, data: bytes) -> str:
        raise InvalidEventError(f"{action} is performed by an association requestor; the node only accepts")

    def _ae_5(self, data: bytes) -> str:
        """Connection accepted: ARTIM runs until the A-ASSOCIATE-RQ has arrived whole."""
        self._wait(self.acse_timeout)
        return "Sta2"

    def _ae_6(self, data: bytes) -> str:
        self.deadline = _FOREVER
        primitive = self._primitive
        assert primitive is not None
        self.request = AssociationRequest(
            calling_ae_title=str(primitive.calling_ae_title or "").strip(),
            called_ae_title=str(primitive.called_ae_title or "").strip(),
            peer_address=self.peer_address,
        )
        if self._protocol_version & 0x0001 == 0:  # PS3.8 9.3.2: bit 0 must be set
            self._decision = AssociationDecision(False, 0x01, 0x02, 0x02, "protocol version not supported")
            return self._ae_8(b"")
        return "Sta3"

    def _ae_7(self, data: bytes) -> str:
        primitive = self._primitive
        assert primitive is not None
        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in primitive.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
        }
        allowed = self._decision.abstract_syntaxes if self._decision is not None else None
        supported = self.supported_contexts if allowed is None else [
            cx for cx in self.supported_contexts if str(cx.abstract_syntax) in allowed
        ]
        results, ac_roles = negotiate_as_acceptor(
            primitive.presentation_context_definition_list, supported, roles
        )
        self.accepted = {
            cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
            for cx in results if cx.result == 0x00 and cx.context_id is not None
        }
        accept = A_ASSOCIATE()
        accept.application_context_name = UID(APPLICATION_CONTEXT_NAME)
        accept.calling_ae_title = primitive.calling_ae_title
        accept.called_ae_title = primitive.called_ae_title
        accept.result = 0x00
        accept.result_source = 0x01
        accept.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = self.maximum_pdu_size
        implementation = ImplementationClassUIDNotification()
        implementation.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        accept.user_information = [max_length, implementation, version, *ac_roles]
        ac = A_ASSOCIATE_AC()
        ac.from_primitive(accept)
        self._primitive = None
        self._send(ac.encode())
        self.user.established(self)
        self._wait(self.network_timeout)
        return "Sta6"

    def _ae_8(self, data: bytes) -> str:
        decision = self._decision
        assert decision is not None
        LOGGER.warning("association from %s (%s) rejected: %s", self.calling_ae_title,
                       self.peer_address, decision.reason)
        reject = A_ASSOCIATE()
        reject.result = decision.result
        reject.result_source = decision.source
        reject.diagnostic = decision.diagnostic
        rj = A_ASSOCIATE_RJ()
        rj.from_primitive(reject)
        self._how = "rejected"
        self._send_or_lose(rj.encode())
        self._wait(self.acse_timeout)
        return "Sta13"

    # -- Data transfer (PS3.8 Table 9-7) ----------------------------------------------------------
    def _dt_1(self, data: bytes) -> str:
        self._send(data)
        return "Sta6"

    def _dt_2(self, data: bytes) -> str:
        """A P-DATA-TF PDU: its PDVs are read as they arrive (PS3.8 9.3.5) and given to the
        DIMSE message in progress; a complete message is answered through Evt9."""
        length = self._pdu_length
        if self.maximum_pdu_size and length > self.maximum_pdu_size + 6:
            raise UpperLayerError(
                f"P-DATA-TF of {length} bytes exceeds the negotiated maximum {self.maximum_pdu_size}",
                ABORT_INVALID_PARAMETER,
            )
        self._wait(self.dimse_timeout + length / self.minimum_transfer_rate)
        stream = self._stream
        left = length
        while left:
            if left < 6:
                raise UpperLayerError("P-DATA-TF: truncated PDV item", ABORT_INVALID_PARAMETER)
            item_length, context_id, control = _PDV_HEADER.unpack(stream.read(6))
            if item_length < 2 or item_length + 4 > left:
                raise UpperLayerError("P-DATA-TF: PDV item length out of range", ABORT_INVALID_PARAMETER)
            left -= 4 + item_length
            fragment = item_length - 2
            if context_id not in self.accepted:
                raise UpperLayerError(f"PDV on presentation context {context_id}, not accepted",
                                      ABORT_INVALID_PARAMETER)
            last = bool(control & 0x02)
            if control & 0x01:  # command fragment (PS3.8 E.2)
                if self._command_size + fragment > MAXIMUM_COMMAND_SET:  # before reading it
                    raise UpperLayerError("command set too large", ABORT_INVALID_PARAMETER)
                self._command_fragment(context_id, stream.read_large(fragment), last)
            else:
                self._data_fragment(context_id, fragment, last)
            if last:  # our own work is not the peer's time: the PDU's remainder gets its share
                self._wait(self.dimse_timeout + left / self.minimum_transfer_rate)
        in_message = bool(self._command_parts) or self._pending is not None
        self._wait(self.dimse_timeout if in_message else self.network_timeout)
        return "Sta6"

    def _command_fragment(self, context_id: int, fragment: bytes, last: bool) -> None:
        if self._pending is not None:
            raise UpperLayerError("command fragment while a data set was expected")
        self._command_size += len(fragment)
        self._command_parts.append(fragment)
        self._command_context = context_id
        if not last:
            return
        try:
            command = decode_command(b"".join(self._command_parts))
        except CommandSetError as exc:
            raise UpperLayerError(str(exc), ABORT_INVALID_PARAMETER) from None
        self._command_parts, self._command_size = [], 0
        abstract_syntax = self.accepted[context_id][0]
        refusal = request_status(command, abstract_syntax)
        if refusal is not None:
            LOGGER.warning(
                "%s (message %d) from %s refused with 0x%04X: Affected SOP Class UID %r on a context "
                "for %s, Affected SOP Instance UID %r", _command_name(command.command_field),
                command.message_id, self.calling_ae_title, refusal, command.affected_sop_class_uid,
                abstract_syntax, command.affected_sop_instance_uid,
            )
        if not command.has_data_set:
            self._respond(command, context_id, 0x0000 if refusal is None else refusal)
            return
        self._pending = command
        self._answered = False
        if refusal is not None:  # answered now; the data set is read and dropped
            self._refuse_early(command, context_id, refusal)
            return
        self._reception = self._start_reception(command, context_id)

    def _data_fragment(self, context_id: int, fragment: int, last: bool) -> None:
        command = self._pending
        if command is None:
            raise UpperLayerError("data set fragment without a command")
        if context_id != self._command_context:
            raise UpperLayerError("data set on another presentation context than its command",
                                  ABORT_INVALID_PARAMETER)
        reception = self._reception
        if reception is None:
            self._stream.pass_on(fragment, _discard)
        else:
            self._stream.pass_on(fragment, reception.write)
            if reception.refusal is not None:
                self._reception = None
                LOGGER.error("C-STORE (message %d) from %s refused (0x%04X) while arriving: %s",
                             command.message_id, self.calling_ae_title, reception.refusal.status,
                             reception.refusal)
                self._refuse_early(command, context_id, reception.refusal.status)
            elif not last and not reception.looked and len(reception.head) >= self.head_bytes > 0:
                reception.looked = True
                reception.early = self._parse_head(command, reception)
        if not last:
            return
        self._pending = None
        if self._answered:
            return
        if reception is not None:
            self._reception = None
            self.deadline = _FOREVER
            status = self._finish(reception, command)
        else:  # its file could not be made
            status = STATUS_OUT_OF_RESOURCES
        self._respond(command, context_id, status)

    def _refuse_early(self, command: Command, context_id: int, status: int) -> None:
        """Answer the request now: the peer learns of the refusal without sending the rest.
        Nothing of it stays in ``incoming/``, not even the file made ahead for the next one."""
        self._answered = True
        if status == STATUS_OUT_OF_RESOURCES:
            self._drop_spare()
        self._respond(command, context_id, status)

    def _respond(self, command: Command, context_id: int, status: int) -> None:
        if command.command_field == C_CANCEL_RQ:  # C-CANCEL-RQ has no response (PS3.7 9.3.2.3)
            return
        response = encode_response(command, status)
        self.fire("Evt9", _pdu(P_DATA_TF_PDU, _PDV_HEADER.pack(len(response) + 2, context_id, 0x03) + response))

    def _start_reception(self, command: Command, context_id: int) -> _Reception | None:
        """The file for a C-STORE data set, or ``None`` when it was refused at once (0xA700)."""
        transfer_syntax = self.accepted[context_id][1]
        meta = _file_meta(command, transfer_syntax)
        margin = self._floor.margin() - len(meta)
        if margin < 0:
            LOGGER.error("C-STORE (message %d) from %s refused (0xA700): free disk space in %s is under "
                         "node.minimum_free_disk_mb", command.message_id, self.calling_ae_title, self.incoming)
            self._refuse_early(command, context_id, STATUS_OUT_OF_RESOURCES)
            return None
        fd = -1
        try:
            fd, name = self._next_file()
            reception = _Reception(command, context_id, transfer_syntax, Path(name), fd, self._floor,
                                   head_bytes=self.head_bytes, margin=margin + len(meta))
            reception.write_meta(meta)
        except (OSError, _DiskRefusal) as exc:
            LOGGER.error("cannot create a file in %s: %s", self.incoming, exc)
            if fd >= 0:
                os.close(fd)
                Path(name).unlink(missing_ok=True)
            self._refuse_early(command, context_id, STATUS_OUT_OF_RESOURCES)
            return None
        return reception

    def _parse_head(self, command: Command, reception: _Reception) -> object:
        try:
            return self.user.parse_head(self, command, bytes(reception.head))
        except Exception:  # only an optimisation: the store handler parses the file anyway
            LOGGER.exception("parsing the head of a reception failed")
            return None

    def _next_file(self) -> tuple[int, str]:
        """The file for this reception, created while the previous one was being received:
        creating a file costs up to 0.5 ms of kernel time here, which then overlaps with
        receiving instead of delaying it."""
        spare, self._spare = self._spare, _FILES.submit(_mkstemp, self.incoming)
        if spare is not None:
            try:
                return spare.result()
            except OSError:  # it failed earlier (disk full then?): try again now
                pass
        return _mkstemp(self.incoming)

    def _finish(self, reception: _Reception, command: Command) -> int:
        try:
            os.close(reception.fd)
        except OSError:
            pass
        reception.fd = -1
        request = StoreRequest(
            command=command,
            transfer_syntax_uid=reception.transfer_syntax_uid,
            path=reception.path,
            sha256=reception.sha256.hexdigest(),
            size_bytes=reception.size,
            early=reception.early,
        )
        try:
            return int(self.user.store(self, request))
        except Exception:
            LOGGER.exception("C-STORE handler failed")
            reception.path.unlink(missing_ok=True)
            return STATUS_PROCESSING_FAILURE

    def _drop_reception(self) -> None:
        """A message left unfinished (release, abort, closed connection): nothing of it stays."""
        reception, self._reception = self._reception, None
        if reception is not None:
            reception.discard()
        if self._pending is not None and self.state in ("Sta8",):
            LOGGER.warning("association from %s released with a message in progress", self.calling_ae_title)
        self._pending = None
        self._command_parts, self._command_size = [], 0

    # -- Association release (PS3.8 Table 9-8) ----------------------------------------------------
    def _ar_2(self, data: bytes) -> str:
        """A-RELEASE-RQ: the node is asked (Sta8); it answers at once (Evt14)."""
        self.deadline = _FOREVER
        return "Sta8"

    def _ar_4(self, data: bytes) -> str:
        self._how = "released"
        self._send(_RELEASE_RP)
        self._wait(self.acse_timeout)  # ARTIM: the requestor closes the connection (PS3.8 7.2)
        return "Sta13"

    def _ar_5(self, data: bytes) -> str:
        """AR-5 "Stop ARTIM timer", AA-2 "Stop ARTIM timer if running. Close transport
        connection" and AA-5 "Stop ARTIM timer" end the same way here: the connection closed."""
        self.deadline = _FOREVER
        self._close()
        return "Sta1"

    def _ar_7(self, data: bytes) -> str:
        self._send(data)
        return "Sta8"

    # -- Association abort (PS3.8 Table 9-9) ------------------------------------------------------
    def _aa_1(self, data: bytes) -> str:
        """A-ABORT: source service-user when the node's user asks for it (Evt15: a deadline, the
        node stopping); a PDU not allowed before the association (Sta2) is the provider's abort,
        with its reason (PS3.8 9.3.8), as in AA-8."""
        if self.state == "Sta2":
            LOGGER.warning("connection from %s aborted before association: %s (reason 0x%02X)",
                           self.peer_address, self._detail or EVENTS[self._event], self._abort_reason)
            self._send_or_lose(_abort_pdu(SOURCE_SERVICE_PROVIDER, self._abort_reason))
        else:
            self._send_or_lose(_abort_pdu(SOURCE_SERVICE_USER, ABORT_NOT_SPECIFIED))
        self._how = "aborted"
        self._drop_reception()
        self._wait(self.acse_timeout)
        return "Sta13"

    _aa_2 = _aa_5 = _ar_5

    def _aa_3(self, data: bytes) -> str:
        """The peer aborted (A-ABORT indication)."""
        self._how = "aborted"
        self._drop_reception()
        self._close()
        return "Sta1"

    def _aa_4(self, data: bytes) -> str:
        """The connection was lost (A-P-ABORT indication)."""
        self._drop_reception()
        self._close()
        return "Sta1"

    def _aa_6(self, data: bytes) -> str:
        return "Sta13"

    def _aa_7(self, data: bytes) -> str:
        self._send_or_lose(_abort_pdu(SOURCE_SERVICE_PROVIDER, self._abort_reason))
        return "Sta13"

    def _aa_8(self, data: bytes) -> str:
        LOGGER.warning("association from %s (%s) aborted: %s in %s (reason 0x%02X)",
                       self.calling_ae_title or "?", self.peer_address,
                       self._detail or EVENTS[self._event], self.state, self._abort_reason)
        self._send_or_lose(_abort_pdu(SOURCE_SERVICE_PROVIDER, self._abort_reason))
        self._how = "aborted"
        self._drop_reception()
        self._wait(self.acse_timeout)
        return "Sta13"

    # -- transport --------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _send_or_lose(self, data: bytes) -> None:
        """Send an A-ABORT or A-ASSOCIATE-RJ to a peer that may be gone already."""
        try:
            self._send(data)
        except OSError:
            pass

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.sock.settimeout(5.0)
            self._send(data)
        except OSError:
            pass

    def _close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is None:
            return
        try:
            fd, name = spare.result()
        except OSError:
            return
        os.close(fd)
        try:
            os.unlink(name)
        except OSError:
            pass


def _command_name(command_field: int) -> str:
    return {C_STORE_RQ: "C-STORE-RQ", 0x0030: "C-ECHO-RQ"}.get(command_field, f"command 0x{command_field:04X}")


_RECEPTIONS = itertools.count()
_FILES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dicom-node-files")


def _mkstemp(directory: Path) -> tuple[int, str]:
    """A new file for a reception, ``rx-<pid>-<n>.dcm`` (``StorageSCP`` clears ``rx-*`` at
    start); cheaper than :func:`tempfile.mkstemp`, which is not needed for a private folder."""
    while True:
        name = os.path.join(directory, f"rx-{os.getpid()}-{next(_RECEPTIONS)}.dcm")
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), name
        except FileExistsError:  # left by an earlier process with the same PID
            continue


_EXPLICIT_SHORT = struct.Struct("<HH2sH")


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # OB has a 4-byte length after two reserved bytes (PS3.5 7.1.2)
        return struct.pack("<HH2s2xI", 0x0002, element, vr, len(value)) + value
    return _EXPLICIT_SHORT.pack(0x0002, element, vr, len(value)) + value


def _even(value: str, pad: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


_IMPLEMENTATION = _meta_element(0x0012, b"UI", _even(IMPLEMENTATION_CLASS_UID, b"\x00")) + _meta_element(
    0x0013, b"SH", _even(IMPLEMENTATION_VERSION_NAME, b" ")
)
_VERSION = _meta_element(0x0001, b"OB", b"\x00\x01")


def _file_meta(command: Command, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (PS3.10 7.1, explicit VR little endian)
    for a received data set, naming the node's implementation: the bytes pydicom's
    ``write_file_meta_info`` writes for the same elements (checked in
    ``tests/dicom_node/test_upper_layer.py``), built directly because pydicom takes 0.4 ms per
    instance for it. The command's UIDs were validated (:func:`~dicom_node.dimse.request_status`)."""
    body = (
        _VERSION
        + _meta_element(0x0002, b"UI", _even(command.affected_sop_class_uid, b"\x00"))
        + _meta_element(0x0003, b"UI", _even(command.affected_sop_instance_uid, b"\x00"))
        + _meta_element(0x0010, b"UI", _even(transfer_syntax_uid, b"\x00"))
        + _IMPLEMENTATION
    )
    return b"\x00" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body
