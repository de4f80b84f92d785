"""The node's Storage SCP: Verification (PS3.4 A) and Storage (PS3.4 B) service classes.

Every C-STORE is received straight to a file in ``data_dir/incoming`` (pynetdicom
``STORE_RECV_CHUNKED_DATASET``: a 1 GB multi-frame never sits in memory), its header is parsed
(not its pixel data), the bytes are made durable under the spool exactly as received, the database
rows are committed, and only then is the C-STORE-RSP sent. Status codes (PS3.4 B.2.3):

========  =================================================================================
0x0000    Success: stored (or an identical copy was already stored: not processed twice)
0xA700    Refused, out of resources: free disk below ``node.minimum_free_disk_mb``
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

import logging
import os
import socket
import socketserver
import tempfile
import threading
import weakref
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
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts, PresentationContext
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import Engine

from gateway.db import make_engine
from gateway.settings import Settings

from .header import HeaderError, read_header
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
from .spool import (
    InsufficientDiskSpaceError,
    SpoolError,
    check_free_disk,
    fsync_fd,
    sha256_fd,
    incoming_dir,
)
from .tls import server_context

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
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATABASE_UNAVAILABLE = 0xA701
STATUS_SPOOL_ERROR = 0xA702
STATUS_SERIES_CONFLICT = 0xC003


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


# -- receiving into data_dir/incoming ---------------------------------------------------------
#
# pynetdicom creates the file for a chunked C-STORE data set with ``NamedTemporaryFile()`` in the
# system temporary folder, from the association's DUL thread. We route it to the node's
# ``incoming`` folder (same file system as the spool: the final rename is atomic and copies
# nothing). When the lookup fails the file lands in the system folder and the spool copies it.

_INCOMING_BY_AE: "weakref.WeakKeyDictionary[AE, str]" = weakref.WeakKeyDictionary()
_HOOK_LOCK = threading.Lock()
_original_named_temporary_file = tempfile.NamedTemporaryFile


def _incoming_named_temporary_file(*args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
    if kwargs.get("dir") is None:
        assoc = getattr(threading.current_thread(), "assoc", None)  # DULServiceProvider.assoc
        ae = getattr(assoc, "ae", None)
        directory = _INCOMING_BY_AE.get(ae) if ae is not None else None
        if directory is not None:
            kwargs["dir"] = directory
            kwargs.setdefault("prefix", "rx-")
    return _original_named_temporary_file(*args, **kwargs)


def _install_receive_hooks() -> None:
    import pynetdicom.dimse_messages as dimse_messages

    with _HOOK_LOCK:
        _config.STORE_RECV_CHUNKED_DATASET = True
        # The standard handlers log every PDU/DIMSE message at debug level and cost CPU per
        # message; the node logs one line per association instead.
        _config.LOG_HANDLER_LEVEL = "none"
        if dimse_messages.NamedTemporaryFile is not _incoming_named_temporary_file:
            dimse_messages.NamedTemporaryFile = _incoming_named_temporary_file


class _NodeServer(ThreadedAssociationServer):
    """pynetdicom's server with TCP_NODELAY on each connection and optional SO_REUSEPORT.

    SO_REUSEPORT lets several node processes share one listening port (the kernel spreads
    connections between them); it must be set before ``bind``.
    """

    reuse_port = False
    daemon_threads = True

    def server_bind(self) -> None:
        if self.reuse_port:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` and close the socket (the server is not in ``AE._servers``)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def get_request(self):  # type: ignore[no-untyped-def]
        client, address = self.socket.accept()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        if self.ssl_context:
            # The handshake happens on the association's first read, in its own thread: a slow
            # or hostile client must not hold up accepting other connections.
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address


class _ReusePortServer(_NodeServer):
    reuse_port = True


class _AssociationCounter:
    """Associations in progress across all listener processes (``node.maximum_associations`` is
    a limit for the node, not per process)."""

    def __init__(self, shared: Any | None = None) -> None:
        self._value = shared if shared is not None else _LocalValue()

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


class _LocalValue:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock


class _Listener:
    """One listening socket served by threads in this process (pynetdicom's server)."""

    def __init__(
        self,
        settings: Settings,
        *,
        port: int,
        reuse_port: bool,
        counter: _AssociationCounter,
    ) -> None:
        self.settings = settings
        self._bind_port = port
        self._reuse_port = reuse_port
        self._counter = counter
        self._engine: Engine | None = None
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._policy: AssociationPolicy | None = None
        self._stats: dict[int, dict[str, int]] = {}
        self._counted: set[int] = set()
        self._io = ThreadPoolExecutor(
            max_workers=2 * settings.node.maximum_associations, thread_name_prefix="dicom-node-fsync"
        )
        self._counted_lock = threading.Lock()

    def start(self) -> None:
        node = self.settings.node
        data_dir = self.settings.data_dir
        incoming = incoming_dir(data_dir)
        ssl_context = server_context(node)
        self._engine = make_engine(self.settings.database_url)
        self._policy = AssociationPolicy(
            self._engine, ae_title=node.ae_title, require_known_callers=node.require_known_callers
        )

        _install_receive_hooks()
        ae = AE(ae_title=node.ae_title)
        # The node-wide limit is enforced in _on_requested and counts associations from their
        # A-ASSOCIATE-RQ on. pynetdicom's own check counts every open connection of this process,
        # including TCP probes that never send a request (they linger until the ARTIM timer,
        # acse_timeout), so it only bounds threads here.
        ae.maximum_associations = 4 * node.maximum_associations
        ae.maximum_pdu_size = node.maximum_pdu_size
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.network_timeout = node.network_timeout_s
        ae.require_called_aet = True
        ae.supported_contexts = supported_contexts()
        _INCOMING_BY_AE[ae] = str(incoming)

        handlers = [
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_RELEASED, self._on_closed, ["released"]),
            (evt.EVT_ABORTED, self._on_closed, ["aborted"]),
        ]
        server_class = _ReusePortServer if self._reuse_port else _NodeServer
        try:
            server = ae.make_server(
                (node.host, self._bind_port),
                ssl_context=ssl_context,
                evt_handlers=handlers,
                server_class=server_class,
            )
        except OSError as exc:
            raise NodeError(f"cannot listen on {node.host}:{self._bind_port}: {exc.strerror}") from None
        self._ae, self._server = ae, server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"dicom-node:{self.port}", daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        if self._server is None:
            raise NodeNotRunningError("the node is not running")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        server, ae = self._server, self._ae
        if server is None or ae is None:
            return
        self._server = None
        server.shutdown()
        for assoc in list(server.active_associations):
            assoc.abort()
        ae.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._io.shutdown(wait=True)

    # -- association accounting -------------------------------------------------------------
    # An association counts from its A-ASSOCIATE-RQ (EVT_REQUESTED) until its connection closes.
    # A bare TCP connection (a port probe, a load balancer's health check) holds no slot.
    def _count_requested(self, event: evt.Event) -> None:
        with self._counted_lock:
            if id(event.assoc) in self._counted:
                return
            self._counted.add(id(event.assoc))
        self._counter.opened()

    def _on_conn_close(self, event: evt.Event) -> None:
        with self._counted_lock:
            if id(event.assoc) not in self._counted:
                return
            self._counted.discard(id(event.assoc))
        self._counter.closed()

    # -- association control ----------------------------------------------------------------
    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        called = str(rq.called_ae_title or "")
        calling = str(rq.calling_ae_title or "")
        peer = str(assoc.requestor.address)
        assert self._policy is not None
        self._count_requested(event)
        if self._counter.value > self.settings.node.maximum_associations:
            decision = AssociationDecision(
                False, RESULT_REJECTED_TRANSIENT, SOURCE_PRESENTATION, DIAG_LOCAL_LIMIT_EXCEEDED,
                f"node.maximum_associations ({self.settings.node.maximum_associations}) reached",
            )
        else:
            try:
                decision = self._policy.evaluate(called, calling, peer)
            except Exception:  # fail closed: an unexpected error must not let a caller in
                LOGGER.exception("association policy failed")
                decision = AssociationDecision(
                    False, RESULT_REJECTED_TRANSIENT, SOURCE_SERVICE_USER, DIAG_NO_REASON,
                    "association policy failed",
                )
        if decision.accepted:
            return
        LOGGER.warning("association from %s (%s) rejected: %s", calling, peer, decision.reason)
        assoc.acse.send_reject(decision.result, decision.source, decision.diagnostic)
        assoc.kill()

    def _on_closed(self, event: evt.Event, how: str) -> None:
        stats = self._stats.pop(id(event.assoc), None)
        if stats:
            LOGGER.info(
                "association from %s %s: %d stored, %d duplicates, %d refused",
                event.assoc.requestor.ae_title, how,
                stats.get("stored", 0), stats.get("duplicate", 0), stats.get("refused", 0),
            )

    def _count(self, event: evt.Event, what: str) -> None:
        stats = self._stats.setdefault(id(event.assoc), {})
        stats[what] = stats.get(what, 0) + 1

    # -- services ---------------------------------------------------------------------------
    @staticmethod
    def _on_c_echo(event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_c_store(self, event: evt.Event) -> int:
        status = self._store(event)
        if status != STATUS_SUCCESS:
            self._count(event, "refused")
        return status

    def _store(self, event: evt.Event) -> int:
        assert self._engine is not None
        data_dir = self.settings.data_dir
        received = Path(event.dataset_path)
        request = event.request
        calling = str(event.assoc.requestor.ae_title).strip() or None
        peer = str(event.assoc.requestor.address)
        affected_uid = str(request.AffectedSOPInstanceUID or "") or None
        try:
            check_free_disk(data_dir, self.settings.node.minimum_free_disk_mb)
        except InsufficientDiskSpaceError as exc:
            received.unlink(missing_ok=True)
            LOGGER.error("C-STORE refused (0xA700): %s", exc)
            return STATUS_OUT_OF_RESOURCES
        # Hashing and the data flush run in worker threads (both release the GIL) while the
        # header is parsed; the flush goes on while the file is renamed into place.
        try:
            fd = os.open(received, os.O_RDONLY)
            fd2 = os.dup(fd)
        except OSError as exc:
            LOGGER.error("C-STORE refused (0xA702): received data unreadable: %s", exc)
            return STATUS_SPOOL_ERROR
        hashed = self._io.submit(sha256_fd, fd)
        synced = self._io.submit(fsync_fd, fd2)
        try:
            try:
                header = read_header(
                    received,
                    affected_sop_class_uid=str(request.AffectedSOPClassUID or ""),
                    affected_sop_instance_uid=affected_uid,
                )
            except HeaderError as exc:
                self._quarantine(received, str(exc), calling, peer, affected_uid)
                return exc.status
            digest, size = hashed.result()
            try:
                result = record_instance(
                    self._engine, data_dir, header, received,
                    sha256=digest, size_bytes=size, calling_ae_title=calling,
                    data_synced=synced.result,
                )
            except SeriesStudyConflictError as exc:
                self._quarantine(received, str(exc), calling, peer, affected_uid)
                return STATUS_SERIES_CONFLICT
            self._count(event, "duplicate" if result.outcome is IngestOutcome.DUPLICATE else "stored")
            return STATUS_SUCCESS
        except IngestError as exc:
            LOGGER.error("C-STORE refused (0xA701): %s", exc)
            return STATUS_DATABASE_UNAVAILABLE
        except (SpoolError, OSError) as exc:
            LOGGER.error("C-STORE refused (0xA702): spool write failed: %s", exc)
            return STATUS_SPOOL_ERROR
        finally:
            for pending in (hashed, synced):
                try:
                    pending.result()
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


# -- the node: one or several listener processes ------------------------------------------------


def _listener_process(settings_json: str, port: int, shared: Any, ready: Any, stop: Any, log_level: int) -> None:
    """Entry point of an additional listener process (``spawn``: no inherited threads or locks)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    settings = Settings.model_validate_json(settings_json)
    parent = os.getppid()
    listener = _Listener(settings, port=port, reuse_port=True, counter=_AssociationCounter(shared))
    try:
        listener.start()
    except Exception as exc:
        ready.put(f"{type(exc).__name__}: {exc}")
        return
    ready.put("ok")
    try:
        while not stop.wait(1.0):
            if os.getppid() != parent:  # the node process died: do not keep its port
                break
    finally:
        listener.stop()


class StorageSCP:
    """The DICOM node: C-ECHO and C-STORE SCP for every storage SOP class.

    >>> scp = StorageSCP(settings)
    >>> scp.start()          # returns at once; binds node.host:node.port (0: an ephemeral port)
    >>> scp.port
    >>> scp.stop()

    ``processes`` > 1 runs that many listener processes on the same port (SO_REUSEPORT; the kernel
    spreads connections between them): one Python process is bound by one CPU (GIL), so several
    associations at once go faster with several processes. Default: ``node.processes``.
    ``node.maximum_associations`` limits the node as a whole.
    """

    def __init__(self, settings: Settings, *, processes: int | None = None) -> None:
        self.settings = settings
        self.processes = max(1, int(processes if processes is not None else settings.node.processes))
        self._listener: _Listener | None = None
        self._children: list[Any] = []
        self._stop_event: Any = None

    def start(self) -> None:
        """Bind and serve in background threads (and processes); returns once listening."""
        if self._listener is not None:
            raise NodeError("the node is already running")
        node = self.settings.node
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        _clean_incoming(incoming_dir(data_dir))
        server_context(node)  # validate TLS settings before anything listens

        if self.processes == 1:
            listener = _Listener(self.settings, port=node.port, reuse_port=False, counter=_AssociationCounter())
            listener.start()
            self._listener = listener
        else:
            self._start_processes()
        LOGGER.info(
            "DICOM node %s listening on %s:%d (%d process%s%s)", node.ae_title, node.host, self.port,
            self.processes, "es" if self.processes > 1 else "", ", TLS" if node.tls_certificate else "",
        )

    def _start_processes(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        shared = ctx.Value("i", 0)
        counter = _AssociationCounter(shared)
        listener = _Listener(self.settings, port=self.settings.node.port, reuse_port=True, counter=counter)
        listener.start()
        self._listener = listener
        port = listener.port
        self._stop_event = ctx.Event()
        ready = ctx.Queue()
        settings_json = self.settings.model_dump_json()
        level = logging.getLogger().getEffectiveLevel()
        for n in range(self.processes - 1):
            proc = ctx.Process(
                target=_listener_process,
                args=(settings_json, port, shared, ready, self._stop_event, level),
                name=f"dicom-node-{n + 1}", daemon=True,
            )
            proc.start()
            self._children.append(proc)
        try:
            for _ in self._children:
                answer = ready.get(timeout=60)
                if answer != "ok":
                    raise NodeError(f"a listener process failed to start: {answer}")
        except Exception:
            self.stop()
            raise

    @property
    def port(self) -> int:
        """The bound TCP port (the ephemeral one when ``node.port`` is 0)."""
        if self._listener is None:
            raise NodeNotRunningError("the node is not running")
        return self._listener.port

    @property
    def running(self) -> bool:
        return self._listener is not None

    def stop(self) -> None:
        """Stop listening, abort associations in progress, stop the listener processes."""
        listener, self._listener = self._listener, None
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
            LOGGER.info("DICOM node %s stopped", self.settings.node.ae_title)

    def __enter__(self) -> "StorageSCP":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _clean_incoming(incoming: Path) -> None:
    """Remove receptions a previous run did not finish (never answered with success)."""
    for leftover in incoming.glob("rx-*"):
        try:
            leftover.unlink()
        except OSError:
            pass
