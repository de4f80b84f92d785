"""The node's Storage SCP: Verification (PS3.4 A) and Storage (PS3.4 B) service classes.

Every C-STORE is received straight to a file in ``data_dir/incoming`` by the node's own Upper
Layer acceptor (:mod:`dicom_node.upper_layer`: a 1 GB multi-frame never sits in memory), its header is parsed
(not its pixel data), the bytes are made durable under the spool exactly as received, the database
rows are committed, and only then is the C-STORE-RSP sent. Status codes (PS3.4 B.2.3):

========  =================================================================================
0x0000    Success: stored (or an identical copy was already stored: not processed twice)
0x0117    Refused, invalid SOP instance: Affected SOP Instance UID missing or not a UID (PS3.7)
0x0122    Refused, SOP class not supported: Affected SOP Class UID missing, not a UID, or not
          the abstract syntax of the presentation context it came on (PS3.7)
0xA700    Refused, out of resources: the data set would take free disk under
          ``node.minimum_free_disk_mb``, or the disk is full (ENOSPC) while it is written;
          answered at once, the rest of the data set is read and dropped
0xA701    Refused, out of resources: the database could not record the instance
0xA702    Refused, out of resources: the spool could not be written (I/O error)
0xA900    Error: SOP Class UID in the data set differs from the Affected SOP Class UID
0xC000    Error, cannot understand: the data set cannot be decoded (quarantined)
0xC001    Error, cannot understand: Study/Series/SOP Instance/SOP Class UID missing or invalid
0xC002    Error, cannot understand: SOP Instance UID differs from the Affected SOP Instance UID
0xC003    Error, cannot understand: the series is filed under another study
========  =================================================================================

Failed objects that arrived whole are kept in quarantine with the reason
(:mod:`dicom_node.quarantine`).

Association control is :mod:`dicom_node.policy` (evaluated on each A-ASSOCIATE-RQ), TLS is
:mod:`dicom_node.tls`.
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import socket
import ssl
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2K,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification
from sqlalchemy import Engine

from common.db import make_engine
from common.logs import configure_logging
from common.settings import Settings

from .dimse import STATUS_OUT_OF_RESOURCES, STATUS_SPOOL_ERROR, Command
from .header import HEAD_BYTES, EarlyHeader, HeaderError, parse_head, read_header
from .ingest import IngestError, IngestOutcome, SeriesStudyConflictError, record_instance
from .policy import (
    DIAG_LOCAL_LIMIT_EXCEEDED,
    DIAG_NO_REASON,
    RESULT_REJECTED_TRANSIENT,
    SOURCE_PRESENTATION,
    SOURCE_SERVICE_USER,
    AssociationDecision,
    AssociationPolicy,
)
from .quarantine import quarantine_file
from .spool import SpoolError, fsync_fd, incoming_dir
from .tls import server_context
from .upper_layer import AcceptorAssociation, AssociationRequest, StoreRequest

__all__ = [
    "TRANSFER_SYNTAXES",
    "STATUS_SUCCESS",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_DATABASE_UNAVAILABLE",
    "STATUS_SPOOL_ERROR",
    "STATUS_SERIES_CONFLICT",
    "NodeError",
    "NodeNotRunningError",
    "supported_contexts",
    "StorageSCP",
]

LOGGER = logging.getLogger(__name__)

#: Transfer syntaxes accepted for every storage SOP class (PS3.5 Annex A, 8.2). pynetdicom accepts,
#: for each proposed presentation context, the first syntax of this list that the requestor
#: proposed, hence the order: lossless compressed syntaxes first (an object kept compressed as the
#: SCU holds it, never degraded), then the uncompressed ones, and lossy syntaxes last (the node
#: never makes an SCU compress lossily an object it holds uncompressed; an object that is already
#: lossy and also offered uncompressed arrives decompressed, without further loss).
LOSSLESS_COMPRESSED: tuple[str, ...] = (
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEGLosslessSV1,
    JPEGLossless,
    RLELossless,
)
UNCOMPRESSED: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
LOSSY: tuple[str, ...] = (JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, HTJ2K)
TRANSFER_SYNTAXES: tuple[str, ...] = LOSSLESS_COMPRESSED + UNCOMPRESSED + LOSSY

STATUS_SUCCESS = 0x0000
STATUS_DATABASE_UNAVAILABLE = 0xA701
STATUS_SERIES_CONFLICT = 0xC003
#: how often the deadlines of all connections of a listener process are looked at
DEADLINE_TICK_S = 0.2


class NodeError(RuntimeError):
    """The DICOM node cannot start or is misused."""


class NodeNotRunningError(NodeError):
    """``port`` or ``stop`` before ``start``."""


def supported_contexts() -> list[PresentationContext]:
    """Verification plus every storage SOP class pynetdicom knows, each with :data:`TRANSFER_SYNTAXES`."""
    contexts: list[PresentationContext] = []
    for abstract in [Verification] + [cx.abstract_syntax for cx in AllStoragePresentationContexts]:
        cx = PresentationContext()
        cx.abstract_syntax = abstract
        cx.transfer_syntax = list(
            TRANSFER_SYNTAXES if abstract != Verification else (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
        )
        contexts.append(cx)
    return contexts


_SPAWN = multiprocessing.get_context("spawn")


class _AssociationCounter:
    """Associations in progress across all listener processes (``node.maximum_associations`` is
    a limit for the node, not per process); ``shared`` is a ``multiprocessing`` Value."""

    def __init__(self, shared: Any) -> None:
        self._value = shared

    def opened(self) -> int:
        with self._value.get_lock():
            self._value.value += 1
            return int(self._value.value)

    def closed(self) -> None:
        with self._value.get_lock():
            self._value.value -= 1

    @property
    def value(self) -> int:
        return int(self._value.value)


class _Loads:
    """Connections in progress per listener process (slot 0 is the accepting process), shared
    between the processes so that each new connection goes to the least busy one; ``shared`` is
    a ``multiprocessing`` Array with a slot per process."""

    def __init__(self, shared: Any) -> None:
        self._array = shared

    def take_least_busy(self) -> int:
        """The slot of the least busy process, counted busier by one."""
        with self._array.get_lock():
            loads = list(self._array)
            slot = loads.index(min(loads))
            self._array[slot] += 1
            return slot

    def take(self, slot: int) -> None:
        with self._array.get_lock():
            self._array[slot] += 1

    def done(self, slot: int) -> None:
        with self._array.get_lock():
            self._array[slot] -= 1


class _PendingByAddress:
    """Connections per client address that are not yet an association (TCP accepted, no
    A-ASSOCIATE-AC sent), across all listener processes: ``node.maximum_pending_connections_per_address``.

    ``shared`` is a ``multiprocessing`` Array of counters; an address counts in the slot its
    CRC-32 selects (the same in every process, unlike ``hash``), so two addresses that share a
    slot share its limit: with 4096 slots that is rare, and costs only a stricter limit.
    """

    SLOTS = 4096

    def __init__(self, shared: Any, limit: int) -> None:
        self._array = shared
        self._limit = limit

    @staticmethod
    def _slot(address: str) -> int:
        return zlib.crc32(address.encode()) % _PendingByAddress.SLOTS

    def take(self, address: str) -> bool:
        """Count a new connection from ``address``; False (not counted) when at the limit."""
        slot = self._slot(address)
        with self._array.get_lock():
            if self._array[slot] >= self._limit:
                return False
            self._array[slot] += 1
            return True

    def release(self, address: str) -> None:
        slot = self._slot(address)
        with self._array.get_lock():
            if self._array[slot] > 0:
                self._array[slot] -= 1


class _Listener:
    """The node's associations in one process: each connection runs in a thread of its own
    (:class:`~dicom_node.upper_layer.AcceptorAssociation`) and this object is their
    :class:`~dicom_node.upper_layer.ServiceUser`. Connections come from the :class:`_Acceptor`
    of this process, or through a Unix socket from the accepting process."""

    def __init__(
        self,
        settings: Settings,
        *,
        counter: _AssociationCounter,
        loads: _Loads,
        pending: _PendingByAddress,
        slot: int = 0,
    ) -> None:
        self.settings = settings
        self._counter = counter
        self._loads = loads
        self._pending = pending
        self._slot = slot
        self._engine: Engine | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._policy: AssociationPolicy | None = None
        self._contexts = supported_contexts()
        self._incoming = incoming_dir(settings.data_dir)
        self._connections: set[AcceptorAssociation] = set()
        self._counted: set[AcceptorAssociation] = set()
        #: connections still counted in _PendingByAddress (not yet an association)
        self._unassociated: set[AcceptorAssociation] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._reaper: threading.Thread | None = None
        self._io = ThreadPoolExecutor(
            max_workers=2 * settings.node.maximum_associations, thread_name_prefix="dicom-node-fsync"
        )

    def start(self) -> None:
        node = self.settings.node
        self._ssl_context = server_context(node)
        self._engine = make_engine(self.settings.database_url)
        self._policy = AssociationPolicy(
            self._engine, ae_title=node.ae_title, require_known_callers=node.require_known_callers
        )
        self._reaper = threading.Thread(target=self._enforce_deadlines, name="dicom-node-deadlines", daemon=True)
        self._reaper.start()

    def _enforce_deadlines(self) -> None:
        """Every :data:`DEADLINE_TICK_S`, end the waits whose deadline has passed (see
        :meth:`AcceptorAssociation.check_deadline`): the deadlines bound total times, which no
        socket timeout can, since a socket timeout starts again with every byte."""
        while not self._stopped.wait(DEADLINE_TICK_S):
            with self._lock:
                connections = list(self._connections)
            now = time.monotonic()
            for association in connections:
                if association.check_deadline(now):
                    LOGGER.warning("connection from %s (%s): %s deadline passed in %s",
                                   association.calling_ae_title or "?", association.peer_address,
                                   "association establishment" if association.state == "Sta2" else "a",
                                   association.state)

    def serve_connection(self, client: socket.socket, address: tuple[str, int]) -> None:
        """Run a new TCP connection's association in a thread of its own (the slot in
        :class:`_Loads` and the one in :class:`_PendingByAddress` were taken by the acceptor and
        are given back when it closes, the latter once it is an association)."""
        node = self.settings.node
        with self._lock:
            # connections that have not sent an A-ASSOCIATE-RQ yet do not count against
            # node.maximum_associations; this only bounds the threads a flood can start
            if len(self._connections) >= 4 * node.maximum_associations:
                client.close()
                self.release_slot(address[0])
                LOGGER.warning("connection from %s refused: too many open connections", address[0])
                return
        if self._ssl_context is not None:
            # the handshake happens in the connection's thread: a slow or hostile client
            # must not hold up accepting other connections
            client = self._ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        association = AcceptorAssociation(
            client, address, self,
            supported_contexts=self._contexts,
            incoming=self._incoming,
            maximum_pdu_size=node.maximum_pdu_size,
            acse_timeout=node.acse_timeout_s,
            dimse_timeout=node.dimse_timeout_s,
            network_timeout=node.network_timeout_s,
            minimum_transfer_rate=node.minimum_transfer_rate_kb_s * 1000.0,
            minimum_free_bytes=int(node.minimum_free_disk_mb * (1 << 20)),
            head_bytes=HEAD_BYTES,
        )
        with self._lock:
            self._connections.add(association)
            self._unassociated.add(association)
        threading.Thread(
            target=self._run, args=(association,), name=f"dicom-assoc:{address[0]}:{address[1]}", daemon=True
        ).start()

    def _run(self, association: AcceptorAssociation) -> None:
        try:
            association.run()
        finally:
            with self._lock:
                self._connections.discard(association)
                unassociated = association in self._unassociated
                self._unassociated.discard(association)
            self._loads.done(self._slot)
            if unassociated:
                self._pending.release(association.peer_address)

    def release_slot(self, address: str) -> None:
        """A connection handed to this process ended before it was served."""
        self._loads.done(self._slot)
        self._pending.release(address)

    def stop(self) -> None:
        """Abort the associations in progress and wait for their flushes."""
        with self._lock:
            connections = list(self._connections)
        for association in connections:
            association.abort()
        self._stopped.set()
        self._io.shutdown(wait=True)
        if self._engine is not None:
            self._engine.dispose()


    # -- association control (ServiceUser) --------------------------------------------------
    # An association counts from its A-ASSOCIATE-RQ until its connection closes. A bare TCP
    # connection (a port probe, a load balancer's health check) holds no slot.
    def associate(self, association: AcceptorAssociation, request: AssociationRequest) -> AssociationDecision:
        assert self._policy is not None
        with self._lock:
            self._counted.add(association)
        self._counter.opened()
        if self._counter.value > self.settings.node.maximum_associations:
            return AssociationDecision(
                False, RESULT_REJECTED_TRANSIENT, SOURCE_PRESENTATION, DIAG_LOCAL_LIMIT_EXCEEDED,
                f"node.maximum_associations ({self.settings.node.maximum_associations}) reached",
            )
        try:
            return self._policy.evaluate(request.called_ae_title, request.calling_ae_title, request.peer_address)
        except Exception:  # fail closed: an unexpected error must not let a caller in
            LOGGER.exception("association policy failed")
            return AssociationDecision(
                False, RESULT_REJECTED_TRANSIENT, SOURCE_SERVICE_USER, DIAG_NO_REASON,
                "association policy failed",
            )

    def established(self, association: AcceptorAssociation) -> None:
        """An association now: no longer counted against its address's pending connections."""
        with self._lock:
            unassociated = association in self._unassociated
            self._unassociated.discard(association)
        if unassociated:
            self._pending.release(association.peer_address)

    def closed(self, association: AcceptorAssociation, how: str) -> None:
        with self._lock:
            counted = association in self._counted
            self._counted.discard(association)
        if counted:
            self._counter.closed()
        stats = association.stats
        if stats:
            LOGGER.info(
                "association from %s %s: %d stored, %d duplicates, %d refused",
                association.calling_ae_title, how,
                stats.get("stored", 0), stats.get("duplicate", 0), stats.get("refused", 0),
            )

    @staticmethod
    def _count(association: AcceptorAssociation, what: str) -> None:
        association.stats[what] = association.stats.get(what, 0) + 1

    # -- Storage service (ServiceUser) ------------------------------------------------------
    def parse_head(self, association: AcceptorAssociation, command: Command, head: bytes) -> object:
        return parse_head(
            head,
            affected_sop_class_uid=command.affected_sop_class_uid,
            affected_sop_instance_uid=command.affected_sop_instance_uid or None,
        )

    def store(self, association: AcceptorAssociation, request: StoreRequest) -> int:
        status = self._store(association, request)
        if status != STATUS_SUCCESS:
            self._count(association, "refused")
        return status

    def _store(self, association: AcceptorAssociation, request: StoreRequest) -> int:
        assert self._engine is not None
        data_dir = self.settings.data_dir
        received = request.path
        command = request.command
        calling = association.calling_ae_title or None
        peer = association.peer_address
        affected_uid = command.affected_sop_instance_uid or None
        # (the disk floor was enforced while the data set arrived: upper_layer._DiskFloor)
        # The data flush runs in a worker thread (it releases the GIL) while the header is
        # parsed; it goes on while the file is renamed into place.
        try:
            fd = os.open(received, os.O_RDONLY)
        except OSError as exc:
            LOGGER.error("C-STORE refused (0xA702): received data unreadable: %s", exc)
            received.unlink(missing_ok=True)
            return STATUS_SPOOL_ERROR
        synced = self._io.submit(fsync_fd, fd)
        early = request.early  # what parse_head (this node's) returned while the data set arrived
        assert early is None or isinstance(early, EarlyHeader), type(early)
        try:
            try:
                header = read_header(
                    received,
                    affected_sop_class_uid=command.affected_sop_class_uid,
                    affected_sop_instance_uid=affected_uid,
                    early=early,
                )
            except HeaderError as exc:
                self._quarantine(received, str(exc), calling, peer, affected_uid)
                return exc.status
            try:
                result = record_instance(
                    self._engine, data_dir, header, received,
                    sha256=request.sha256, size_bytes=request.size_bytes, calling_ae_title=calling,
                    data_synced=synced.result,
                )
            except SeriesStudyConflictError as exc:
                self._quarantine(received, str(exc), calling, peer, affected_uid)
                return STATUS_SERIES_CONFLICT
            self._count(association, "duplicate" if result.outcome is IngestOutcome.DUPLICATE else "stored")
            return STATUS_SUCCESS
        except IngestError as exc:
            LOGGER.error("C-STORE refused (0xA701): %s", exc)
            return STATUS_DATABASE_UNAVAILABLE
        except (SpoolError, OSError) as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a delayed allocation failing at fsync
                LOGGER.error("C-STORE refused (0xA700): disk full: %s", exc)
                return STATUS_OUT_OF_RESOURCES
            LOGGER.error("C-STORE refused (0xA702): spool write failed: %s", exc)
            return STATUS_SPOOL_ERROR
        finally:
            try:
                synced.result()
            except OSError:
                pass
            received.unlink(missing_ok=True)

    def _quarantine(
        self, received: Path, reason: str, calling: str | None, peer: str, affected_uid: str | None
    ) -> None:
        assert self._engine is not None
        try:
            quarantine_file(
                self._engine, self.settings.data_dir, received, reason=reason,
                calling_ae_title=calling, peer_address=peer,
                affected_sop_instance_uid=affected_uid,
            )
        except Exception as exc:  # the refusal status is sent regardless
            LOGGER.error("could not quarantine a refused object: %s", exc)


class _Acceptor:
    """The node's listening socket (one, in the node's main process): accepts each connection
    and gives it to the least busy listener process: its own :class:`_Listener`, or another
    process through a Unix socket (``SCM_RIGHTS``). Unlike several processes each listening
    with SO_REUSEPORT, where the kernel may put three of four associations on one process,
    this spreads associations evenly."""

    def __init__(
        self, settings: Settings, local: _Listener, loads: _Loads, pending: _PendingByAddress,
        channels: list[socket.socket],
    ) -> None:
        self.settings = settings
        self._local = local
        self._loads = loads
        self._pending = pending
        self._refusals_logged_at = 0.0
        self._channels = channels
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        node = self.settings.node
        family = socket.AF_INET6 if ":" in node.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((node.host, node.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise NodeError(f"cannot listen on {node.host}:{node.port}: {exc.strerror}") from None
        sock.settimeout(0.2)
        self._socket = sock
        self._thread = threading.Thread(target=self._accept_loop, name=f"dicom-node:{self.port}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        if self._socket is None:
            raise NodeNotRunningError("the node is not running")
        return int(self._socket.getsockname()[1])

    def _accept_loop(self) -> None:
        assert self._socket is not None
        while not self._stopping.is_set():
            try:
                client, address = self._socket.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                LOGGER.exception("accept failed")
                continue
            try:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
            address = (str(address[0]), int(address[1]))
            if not self._pending.take(address[0]):
                client.close()
                self._log_refusal(address[0])
                continue
            slot = self._loads.take_least_busy()
            if slot and self._hand_over(slot, client, address):
                continue
            if slot:  # that process is gone or stuck: serve it here
                self._loads.done(slot)
                self._loads.take(0)
            try:
                self._local.serve_connection(client, address)
            except Exception:  # one bad connection must not stop the node accepting
                LOGGER.exception("cannot serve a connection from %s", address[0])
                client.close()
                self._local.release_slot(address[0])

    def _log_refusal(self, address: str) -> None:
        """A warning at most every 10 s: a flood must not flood the log too."""
        now = time.monotonic()
        if now - self._refusals_logged_at >= 10.0:
            self._refusals_logged_at = now
            LOGGER.warning(
                "connection from %s closed: node.maximum_pending_connections_per_address (%d) reached",
                address, self.settings.node.maximum_pending_connections_per_address,
            )

    def _hand_over(self, slot: int, client: socket.socket, address: tuple[str, int]) -> bool:
        try:
            socket.send_fds(self._channels[slot - 1], [json.dumps(address).encode()], [client.fileno()])
        except OSError as exc:
            LOGGER.error("cannot hand a connection to listener process %d: %s", slot, exc)
            return False
        client.close()  # the other process has its own descriptor now
        return True

    def stop(self) -> None:
        sock, self._socket = self._socket, None
        if sock is None:
            return
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        sock.close()
        for channel in self._channels:
            channel.close()

# -- the node: one or several listener processes ------------------------------------------------


def _listener_process(
    settings_json: str, channel: socket.socket, slot: int, loads: Any, shared: Any, pending: Any,
    ready: Any, stop: Any, log_level: int,
) -> None:
    """Entry point of an additional listener process (``spawn``: no inherited threads or locks):
    serves the connections the accepting process passes through ``channel``."""
    settings = Settings.model_validate_json(settings_json)
    configure_logging(logging.getLevelName(log_level), settings.logging.format)
    parent = os.getppid()
    listener = _Listener(
        settings, counter=_AssociationCounter(shared), loads=_Loads(loads),
        pending=_PendingByAddress(pending, settings.node.maximum_pending_connections_per_address), slot=slot,
    )
    try:
        listener.start()
    except Exception as exc:
        ready.put(f"{type(exc).__name__}: {exc}")
        return
    ready.put("ok")
    channel.settimeout(1.0)
    try:
        while not stop.is_set() and os.getppid() == parent:  # a dead node must not leave us
            try:
                message, fds, _flags, _address = socket.recv_fds(channel, 1024, 4)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            if not fds:
                if not message:  # the accepting process closed the channel
                    break
                continue
            client = socket.socket(fileno=fds[0])
            for extra in fds[1:]:
                os.close(extra)
            host, port = json.loads(message)
            try:
                listener.serve_connection(client, (str(host), int(port)))
            except Exception:  # one bad connection must not end this process
                LOGGER.exception("cannot serve a connection from %s", host)
                client.close()
                listener.release_slot(str(host))
    finally:
        listener.stop()


class StorageSCP:
    """The DICOM node: C-ECHO and C-STORE SCP for every storage SOP class.

    >>> scp = StorageSCP(settings)
    >>> scp.start()          # returns at once; binds node.host:node.port (0: an ephemeral port)
    >>> scp.port
    >>> scp.stop()

    ``processes`` > 1 runs that many listener processes: this one accepts every connection and
    gives each to the process with the fewest connections in progress (itself included). One
    Python process is bound by one CPU (GIL), so several associations at once go faster with
    several processes on a machine with the cores for them. Default: ``node.processes``.
    ``node.maximum_associations`` limits the node as a whole.
    """

    def __init__(self, settings: Settings, *, processes: int | None = None) -> None:
        self.settings = settings
        self.processes = _process_count(processes if processes is not None else settings.node.processes)
        self._listener: _Listener | None = None
        self._acceptor: _Acceptor | None = None
        self._children: list[Any] = []
        self._stop_event: Any = None

    def start(self) -> None:
        """Bind and serve in background threads (and processes); returns once listening."""
        if self._acceptor is not None:
            raise NodeError("the node is already running")
        node = self.settings.node
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        _clean_incoming(incoming_dir(data_dir))
        server_context(node)  # validate TLS settings before anything listens

        try:
            shared = _SPAWN.Value("i", 0)
            load_counts = _SPAWN.Array("i", self.processes)
            pending_counts = _SPAWN.Array("i", _PendingByAddress.SLOTS)
            channels = self._start_processes(shared, load_counts, pending_counts) if self.processes > 1 else []
            counter, loads = _AssociationCounter(shared), _Loads(load_counts)
            pending = _PendingByAddress(pending_counts, node.maximum_pending_connections_per_address)
            listener = _Listener(self.settings, counter=counter, loads=loads, pending=pending, slot=0)
            listener.start()
            self._listener = listener
            acceptor = _Acceptor(self.settings, listener, loads, pending, channels)
            acceptor.start()
            self._acceptor = acceptor
        except Exception:
            self.stop()
            raise
        LOGGER.info(
            "DICOM node %s listening on %s:%d (%d process%s%s)", node.ae_title, node.host, self.port,
            self.processes, "es" if self.processes > 1 else "", ", TLS" if node.tls_certificate else "",
        )

    def _start_processes(self, shared: Any, loads: Any, pending: Any) -> list[socket.socket]:
        """Start the other listener processes; the channels to hand them connections."""
        ctx = _SPAWN
        self._stop_event = ctx.Event()
        ready = ctx.Queue()
        settings_json = self.settings.model_dump_json()
        level = logging.getLogger().getEffectiveLevel()
        channels: list[socket.socket] = []
        for n in range(1, self.processes):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            # a process that stops reading (its channel full) must not hold up accepting: after
            # 2 s the connection is served here; its unfinished connections keep its load high,
            # so it is not chosen again meanwhile
            ours.settimeout(2.0)
            proc = ctx.Process(
                target=_listener_process,
                args=(settings_json, theirs, n, loads, shared, pending, ready, self._stop_event, level),
                name=f"dicom-node-{n}", daemon=True,
            )
            proc.start()
            theirs.close()
            channels.append(ours)
            self._children.append(proc)
        try:
            for _ in self._children:
                answer = ready.get(timeout=60)
                if answer != "ok":
                    raise NodeError(f"a listener process failed to start: {answer}")
        except Exception:
            for channel in channels:
                channel.close()
            raise
        return channels

    @property
    def port(self) -> int:
        """The bound TCP port (the ephemeral one when ``node.port`` is 0)."""
        if self._acceptor is None:
            raise NodeNotRunningError("the node is not running")
        return self._acceptor.port

    @property
    def running(self) -> bool:
        return self._acceptor is not None

    def stop(self) -> None:
        """Stop listening, abort associations in progress, stop the listener processes."""
        acceptor, self._acceptor = self._acceptor, None
        listener, self._listener = self._listener, None
        if acceptor is not None:
            acceptor.stop()
        if self._stop_event is not None:
            self._stop_event.set()
        for proc in self._children:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self._children = []
        if listener is not None:
            listener.stop()
        if acceptor is not None:
            LOGGER.info("DICOM node %s stopped", self.settings.node.ae_title)

    def __enter__(self) -> "StorageSCP":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _process_count(configured: int) -> int:
    """``node.processes``, where 0 means one per CPU core, at most 8."""
    if configured > 0:
        return int(configured)
    return max(1, min(8, os.cpu_count() or 1))


def _clean_incoming(incoming: Path) -> None:
    """Remove receptions a previous run did not finish (never answered with success)."""
    for leftover in incoming.glob("rx-*"):
        try:
            leftover.unlink()
        except OSError:
            pass
