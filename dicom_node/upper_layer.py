"""The acceptor side of the DICOM Upper Layer protocol for the node (PS3.8 7, 9) over TCP/TLS.

One :class:`AcceptorAssociation` runs one connection in one thread, from the A-ASSOCIATE-RQ to
the release or abort: it reads PDUs (PS3.8 9.3) straight from the socket, streams the data set
fragments of each C-STORE-RQ to a file in ``incoming/`` as they arrive (hashing them on the way),
hands the finished file to the :class:`ServiceUser` and sends the response.

Why not pynetdicom's ``AE``: its DUL and DIMSE layers are two threads per association that poll
queues with 1 ms sleeps and build Python objects for every PDU, about 2.5-4 ms of CPU per small
instance before the node does any work of its own (``docs/benchmarks.md``); DCMTK ``storescp``
spends about 2 ms for everything. The protocol the node needs as an acceptor for C-STORE and
C-ECHO is small and fixed, so it is run here in one thread with blocking reads. What is not
trivial is still pynetdicom's: the A-ASSOCIATE PDUs are encoded and decoded by
:mod:`pynetdicom.pdu` and presentation contexts negotiated by
:func:`pynetdicom.presentation.negotiate_as_acceptor`. The node's SCU side
(:mod:`dicom_node.sender`) uses pynetdicom unchanged.

State machine (PS3.8 9.2, the acceptor's states only): Sta2 (connection open, ARTIM running:
``acse_timeout``) -> A-ASSOCIATE-RQ -> accept (Sta6) or reject -> P-DATA-TF ... (Sta6) ->
A-RELEASE-RQ -> A-RELEASE-RP, close. A-ABORT from the peer closes at once. Any PDU not allowed
in a state, an unknown PDU type or a malformed PDU is answered with A-ABORT (source: service
provider, with the PS3.8 9.3.8 reason) and the connection closed. Idle longer than
``network_timeout`` between messages, or ``dimse_timeout`` inside a message, aborts too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import ssl
import itertools
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
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
from pydicom.uid import UID

from .dimse import (
    C_ECHO_RQ,
    C_STORE_RQ,
    STATUS_OUT_OF_RESOURCES,
    STATUS_PROCESSING_FAILURE,
    STATUS_UNRECOGNIZED_OPERATION,
    Command,
    CommandSetError,
    decode_command,
    encode_response,
)
from .policy import AssociationDecision

__all__ = [
    "UpperLayerError",
    "AssociationRequest",
    "StoreRequest",
    "ServiceUser",
    "AcceptorAssociation",
]

LOGGER = logging.getLogger(__name__)

# PDU types (PS3.8 9.3.1)
A_ASSOCIATE_RQ_PDU = 0x01
A_ASSOCIATE_AC_PDU = 0x02
A_ASSOCIATE_RJ_PDU = 0x03
P_DATA_TF_PDU = 0x04
A_RELEASE_RQ_PDU = 0x05
A_RELEASE_RP_PDU = 0x06
A_ABORT_PDU = 0x07

# A-ABORT reasons when the source is the service provider (PS3.8 9.3.8)
ABORT_NOT_SPECIFIED = 0x00
ABORT_UNRECOGNIZED_PDU = 0x01
ABORT_UNEXPECTED_PDU = 0x02
ABORT_INVALID_PARAMETER = 0x06
SOURCE_SERVICE_USER = 0x00
SOURCE_SERVICE_PROVIDER = 0x02

#: An A-ASSOCIATE-RQ larger than this is refused (128 presentation contexts with every transfer
#: syntax of PS3.5 stay well under it); it bounds the memory a hostile peer can make us allocate.
MAXIMUM_REQUEST_PDU = 1 << 20
#: Largest command set accepted (a C-STORE-RQ is about 150 bytes).
MAXIMUM_COMMAND_SET = 1 << 16
_RECEIVE_BUFFER = 1 << 20

_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")


class UpperLayerError(Exception):
    """The peer broke the Upper Layer protocol; ``reason`` is the PS3.8 9.3.8 A-ABORT reason."""

    def __init__(self, message: str, reason: int = ABORT_UNEXPECTED_PDU) -> None:
        super().__init__(message)
        self.reason = reason


class _ConnectionClosed(Exception):
    """The peer closed the TCP connection."""


class _PeerAborted(Exception):
    """The peer sent A-ABORT."""


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
    transfer syntax, then the data set bytes exactly as received. ``sha256`` and ``size_bytes``
    are of that whole file.
    """

    command: Command
    transfer_syntax_uid: str
    path: Path
    sha256: str
    size_bytes: int
    #: what :meth:`ServiceUser.parse_head` returned, if the data set was long enough for it
    early: object = None


class ServiceUser(Protocol):
    """The node's side of the association: policy, storage, logging."""

    def associate(self, association: "AcceptorAssociation", request: AssociationRequest) -> AssociationDecision:
        """Accept or reject an A-ASSOCIATE-RQ (called before presentation negotiation)."""

    def parse_head(self, association: "AcceptorAssociation", command: Command, head: bytes) -> object:
        """Look at the first ``head_bytes`` of a C-STORE data set's file (file meta included)
        while the rest is still arriving; the result comes back as ``StoreRequest.early``."""

    def store(self, association: "AcceptorAssociation", request: StoreRequest) -> int:
        """File ``request.path`` and return the C-STORE status; the file is the callee's."""

    def closed(self, association: "AcceptorAssociation", how: str) -> None:
        """The association ended: ``released``, ``aborted``, ``rejected`` or ``dropped``."""


@dataclass
class _Reception:
    """A C-STORE-RQ whose data set is arriving."""

    command: Command
    context_id: int
    transfer_syntax_uid: str
    path: Path
    fd: int
    head_bytes: int = 0
    sha256: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    size: int = 0
    head: bytearray = field(default_factory=bytearray)
    early: object = None
    looked: bool = False

    def write(self, chunk: memoryview | bytes) -> None:
        self.sha256.update(chunk)
        if len(self.head) < self.head_bytes:
            self.head += chunk[: self.head_bytes - len(self.head)]
        view = memoryview(chunk)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(chunk)

    def discard(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass
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

    def pass_on(self, n: int, sink) -> None:  # type: ignore[no-untyped-def]
        """Hand the next ``n`` bytes to ``sink`` in pieces, without copying them."""
        while n:
            if self._start == self._end:
                self._start = self._end = 0
                self._recv()
            take = min(n, self._end - self._start)
            sink(self._view[self._start:self._start + take])
            self._start += take
            n -= take


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return _PDU_HEADER.pack(pdu_type, len(body)) + body


def _abort_pdu(source: int, reason: int) -> bytes:
    return _pdu(A_ABORT_PDU, bytes((0, 0, source, reason)))


_RELEASE_RP = _pdu(A_RELEASE_RP_PDU, b"\x00\x00\x00\x00")


class AcceptorAssociation:
    """One association accepted by the node, run by :meth:`run` in the connection's thread.

    ``supported_contexts`` are the presentation contexts the node accepts (abstract syntax and
    transfer syntaxes in order of preference); ``maximum_pdu_size`` is the Maximum Length
    announced in the A-ASSOCIATE-AC (0: no limit, PS3.7 D.1). Once ``head_bytes`` of a data set's
    file are written and more fragments are due, :meth:`ServiceUser.parse_head` looks at them, so
    that parsing overlaps with the transfer of the rest (the pixel data).
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
        #: size of the head handed to ServiceUser.parse_head (0: never)
        self.head_bytes = head_bytes
        self.request: AssociationRequest | None = None
        #: accepted presentation context ID -> transfer syntax UID
        self.accepted: dict[int, str] = {}
        self.stats: dict[str, int] = {}
        self._stream = _Stream(sock)
        self._send_lock = threading.Lock()
        self._closing = False
        self._spare: Future[tuple[int, str]] | None = None

    @property
    def calling_ae_title(self) -> str:
        return self.request.calling_ae_title if self.request else ""

    # -- running ------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve the connection until it ends; never raises."""
        how = "dropped"
        try:
            if isinstance(self.sock, ssl.SSLSocket):
                self.sock.settimeout(self.acse_timeout)
                self.sock.do_handshake()
            if not self._associate():
                how = "rejected"
                return
            how = self._serve()
        except _PeerAborted:
            how = "aborted"
        except UpperLayerError as exc:
            LOGGER.warning("association from %s (%s) aborted: %s", self.calling_ae_title or "?",
                           self.peer_address, exc)
            self._send_quietly(_abort_pdu(SOURCE_SERVICE_PROVIDER, exc.reason))
            how = "aborted"
        except (socket.timeout, TimeoutError):
            if self.request is not None:
                LOGGER.warning("association from %s (%s) aborted: timed out",
                               self.calling_ae_title, self.peer_address)
                self._send_quietly(_abort_pdu(SOURCE_SERVICE_PROVIDER, ABORT_NOT_SPECIFIED))
                how = "aborted"
        except (_ConnectionClosed, ssl.SSLError, OSError) as exc:
            if self.request is not None and not self._closing:
                LOGGER.warning("association from %s (%s): connection lost (%s)",
                               self.calling_ae_title, self.peer_address, exc or type(exc).__name__)
        except Exception:  # a defect here must end one association, never the node
            LOGGER.exception("association from %s (%s) failed", self.calling_ae_title, self.peer_address)
            self._send_quietly(_abort_pdu(SOURCE_SERVICE_PROVIDER, ABORT_NOT_SPECIFIED))
            how = "aborted"
        finally:
            self._close()
            self._drop_spare()
            try:
                self.user.closed(self, how)
            except Exception:
                LOGGER.exception("association close handler failed")

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

    def abort(self) -> None:
        """A-ABORT from this side (node shutdown); the thread in :meth:`run` then ends."""
        self._closing = True
        self._send_quietly(_abort_pdu(SOURCE_SERVICE_USER, ABORT_NOT_SPECIFIED))
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _send_quietly(self, data: bytes) -> None:
        try:
            self.sock.settimeout(5.0)
            self._send(data)
        except OSError:
            pass

    # -- Sta2 -> Sta6: association establishment (PS3.8 7.1, 9.3.2-9.3.4) --------------------------
    def _read_pdu_header(self) -> tuple[int, int]:
        pdu_type, length = _PDU_HEADER.unpack(self._stream.read(6))
        return pdu_type, length

    def _associate(self) -> bool:
        self.sock.settimeout(self.acse_timeout)
        pdu_type, length = self._read_pdu_header()
        if pdu_type != A_ASSOCIATE_RQ_PDU:
            raise UpperLayerError(f"PDU type 0x{pdu_type:02X} before A-ASSOCIATE-RQ",
                                  ABORT_UNEXPECTED_PDU if 1 <= pdu_type <= 7 else ABORT_UNRECOGNIZED_PDU)
        if length > MAXIMUM_REQUEST_PDU:
            raise UpperLayerError(f"A-ASSOCIATE-RQ of {length} bytes", ABORT_INVALID_PARAMETER)
        raw = _PDU_HEADER.pack(pdu_type, length) + self._stream.read_large(length)
        try:
            pdu = A_ASSOCIATE_RQ()
            pdu.decode(raw)
            primitive = pdu.to_primitive()
        except Exception as exc:
            raise UpperLayerError(f"malformed A-ASSOCIATE-RQ: {exc}", ABORT_INVALID_PARAMETER) from None

        request = AssociationRequest(
            calling_ae_title=str(primitive.calling_ae_title or "").strip(),
            called_ae_title=str(primitive.called_ae_title or "").strip(),
            peer_address=self.peer_address,
        )
        self.request = request
        if pdu.protocol_version & 0x0001 == 0:  # PS3.8 9.3.2: bit 0 must be set
            self._reject(AssociationDecision(False, 0x01, 0x02, 0x02, "protocol version not supported"))
            return False
        decision = self.user.associate(self, request)
        if not decision.accepted:
            self._reject(decision)
            return False

        roles = {
            item.sop_class_uid: (item.scu_role, item.scp_role)
            for item in primitive.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        }
        results, ac_roles = negotiate_as_acceptor(
            primitive.presentation_context_definition_list, self.supported_contexts, roles
        )
        self.accepted = {
            int(cx.context_id): str(cx.transfer_syntax[0]) for cx in results if cx.result == 0x00
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
        implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        accept.user_information = [max_length, implementation, version, *ac_roles]
        ac = A_ASSOCIATE_AC()
        ac.from_primitive(accept)
        self._send(ac.encode())
        return True

    def _reject(self, decision: AssociationDecision) -> None:
        LOGGER.warning("association from %s (%s) rejected: %s", self.calling_ae_title,
                       self.peer_address, decision.reason)
        reject = A_ASSOCIATE()
        reject.result = decision.result
        reject.result_source = decision.source
        reject.diagnostic = decision.diagnostic
        rj = A_ASSOCIATE_RJ()
        rj.from_primitive(reject)
        self._send(rj.encode())
        # PS3.8 9.2 AA-... : the requestor closes the connection; wait briefly (ARTIM) for it
        try:
            self.sock.settimeout(min(self.acse_timeout, 5.0))
            while self.sock.recv(4096):
                pass
        except OSError:
            pass

    # -- Sta6: data transfer (PS3.8 9.3.5) and release (9.3.6, 9.3.7) -----------------------------
    def _serve(self) -> str:
        command_parts: list[bytes] = []
        command_size = 0
        command_context = 0
        pending: Command | None = None
        reception: _Reception | None = None
        try:
            while True:
                in_message = bool(command_parts) or pending is not None
                self.sock.settimeout(self.dimse_timeout if in_message else self.network_timeout)
                pdu_type, length = self._read_pdu_header()
                if pdu_type == A_RELEASE_RQ_PDU:
                    if length > 1024:
                        raise UpperLayerError(f"A-RELEASE-RQ of {length} bytes", ABORT_INVALID_PARAMETER)
                    self._stream.read(length)
                    if in_message:
                        LOGGER.warning("association from %s released with a message in progress",
                                       self.calling_ae_title)
                    self._send(_RELEASE_RP)
                    return "released"
                if pdu_type == A_ABORT_PDU:
                    raise _PeerAborted()
                if pdu_type != P_DATA_TF_PDU:
                    raise UpperLayerError(
                        f"PDU type 0x{pdu_type:02X} during data transfer",
                        ABORT_UNEXPECTED_PDU if 1 <= pdu_type <= 7 else ABORT_UNRECOGNIZED_PDU,
                    )
                if self.maximum_pdu_size and length > self.maximum_pdu_size + 6:
                    raise UpperLayerError(
                        f"P-DATA-TF of {length} bytes exceeds the negotiated maximum {self.maximum_pdu_size}",
                        ABORT_INVALID_PARAMETER,
                    )
                left = length
                while left:
                    if left < 6:
                        raise UpperLayerError("P-DATA-TF: truncated PDV item", ABORT_INVALID_PARAMETER)
                    item_length, context_id, control = _PDV_HEADER.unpack(self._stream.read(6))
                    if item_length < 2 or item_length + 4 > left:
                        raise UpperLayerError("P-DATA-TF: PDV item length out of range", ABORT_INVALID_PARAMETER)
                    left -= 4 + item_length
                    fragment = item_length - 2
                    if context_id not in self.accepted:
                        raise UpperLayerError(f"PDV on presentation context {context_id}, not accepted",
                                              ABORT_INVALID_PARAMETER)
                    last = bool(control & 0x02)
                    if control & 0x01:  # command fragment (PS3.8 E.2)
                        if pending is not None:
                            raise UpperLayerError("command fragment while a data set was expected")
                        command_size += fragment
                        if command_size > MAXIMUM_COMMAND_SET:
                            raise UpperLayerError("command set too large", ABORT_INVALID_PARAMETER)
                        command_parts.append(self._stream.read(fragment))
                        command_context = context_id
                        if not last:
                            continue
                        try:
                            command = decode_command(b"".join(command_parts))
                        except CommandSetError as exc:
                            raise UpperLayerError(str(exc), ABORT_INVALID_PARAMETER) from None
                        command_parts, command_size = [], 0
                        if command.has_data_set:
                            pending = command
                            reception = self._start_reception(command, command_context)
                        else:
                            self._answer(command, command_context, self._no_data(command))
                    else:  # data set fragment
                        if pending is None:
                            raise UpperLayerError("data set fragment without a command")
                        if context_id != command_context:
                            raise UpperLayerError("data set on another presentation context than its command",
                                                  ABORT_INVALID_PARAMETER)
                        if reception is not None:
                            self._stream.pass_on(fragment, reception.write)
                            if not last and not reception.looked and len(reception.head) >= self.head_bytes > 0:
                                reception.looked = True
                                reception.early = self._parse_head(pending, reception)
                        else:
                            self._stream.pass_on(fragment, _discard)
                        if last:
                            command, pending = pending, None
                            if reception is not None:
                                status = self._finish(reception, command)
                            elif command.command_field == C_STORE_RQ:  # its file could not be made
                                status = STATUS_OUT_OF_RESOURCES
                            else:
                                status = STATUS_UNRECOGNIZED_OPERATION
                            reception = None
                            self._answer(command, context_id, status)
        finally:
            if reception is not None:
                reception.discard()

    def _start_reception(self, command: Command, context_id: int) -> _Reception | None:
        if command.command_field != C_STORE_RQ:
            return None  # its data set is read and dropped, then the operation refused
        transfer_syntax = self.accepted[context_id]
        fd = -1
        try:
            fd, name = self._next_file()
            reception = _Reception(command, context_id, transfer_syntax, Path(name), fd,
                                   head_bytes=self.head_bytes)
            meta = _file_meta(command, transfer_syntax)
            reception.write(meta)
        except OSError as exc:
            LOGGER.error("cannot create a file in %s: %s", self.incoming, exc)
            if fd >= 0:
                os.close(fd)
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

    def _no_data(self, command: Command) -> int:
        if command.command_field == C_ECHO_RQ:
            return 0x0000
        return STATUS_UNRECOGNIZED_OPERATION

    def _answer(self, command: Command, context_id: int, status: int) -> None:
        if command.command_field == 0x0FFF:  # C-CANCEL-RQ has no response (PS3.7 9.3.2.3)
            return
        response = encode_response(command, status)
        pdv = _PDV_HEADER.pack(len(response) + 2, context_id, 0x03) + response
        self._send(_pdu(P_DATA_TF_PDU, pdv))


def _discard(_chunk: memoryview) -> None:
    return None


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


_IMPLEMENTATION = _meta_element(0x0012, b"UI", _even(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")) + _meta_element(
    0x0013, b"SH", _even(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")
)
_VERSION = _meta_element(0x0001, b"OB", b"\x00\x01")


def _file_meta(command: Command, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (PS3.10 7.1, explicit VR little endian)
    for a received data set: the bytes pydicom's ``write_file_meta_info`` writes for
    pynetdicom's ``create_file_meta`` (checked in ``tests/dicom_node/test_upper_layer.py``),
    built directly because pydicom takes 0.4 ms per instance for it."""
    body = (
        _VERSION
        + _meta_element(0x0002, b"UI", _even(command.affected_sop_class_uid, b"\x00"))
        + _meta_element(0x0003, b"UI", _even(command.affected_sop_instance_uid, b"\x00"))
        + _meta_element(0x0010, b"UI", _even(transfer_syntax_uid, b"\x00"))
        + _IMPLEMENTATION
    )
    return b"\x00" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body
