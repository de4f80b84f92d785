"""Association control: who may associate with the node (PS3.8 7.1.1, 9.3.4).

Evaluated for every A-ASSOCIATE-RQ from the database, so an administrator's change (``medrega-gateway
ae add|remove``) applies to the next association without a restart. The cost is one indexed query
per association.

Rules, in order:

1. The Called AE Title must be the node's (``node.ae_title``), else the association is rejected
   permanently, source service-user, reason *called-AE-title-not-recognized* (0x07).
2. The allow-list is enforced when ``node.require_known_callers`` is true **or** the ``calling_aes``
   table has at least one row: an administrator who lists one caller means "only these". With an
   empty table and ``require_known_callers = false`` every caller is accepted (first installation).
   With ``require_known_callers = true`` and an empty table nobody is accepted.
3. A disabled caller (``CallingAE.enabled`` false) is rejected like an unknown title; it still
   counts as a row of the table, so disabling the last caller does not open the node to everyone.
   An allowed caller may be pinned to a host: ``CallingAE.host`` is an IP address, a network in
   CIDR notation (``10.1.2.0/24``) or a host name (resolved, cached for a minute). A caller whose
   title is listed but who connects from elsewhere is rejected like an unknown title: permanent,
   service-user, *calling-AE-title-not-recognized* (0x03).
4. If the database cannot be read the association is rejected *transient*, no reason given, so the
   SCU retries later instead of treating the node as misconfigured.

Before rules 2-4, the node's own AE title calling from a loopback address (``medrega-gateway
status``, the container health check) is accepted for the Verification SOP Class only (PS3.4 A):
the allow-list cannot make the node's self-check fail, and that association can store nothing.

AE titles are compared exactly after removing leading and trailing spaces (PS3.5 6.2: they are not
significant), case-sensitively as DCMTK and most PACS do.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Engine, exists, select
from sqlalchemy.exc import SQLAlchemyError

from pynetdicom.sop_class import Verification

from common.models import CallingAE

__all__ = [
    "RESULT_REJECTED_PERMANENT",
    "RESULT_REJECTED_TRANSIENT",
    "SOURCE_SERVICE_USER",
    "DIAG_NO_REASON",
    "DIAG_CALLING_AE_NOT_RECOGNIZED",
    "DIAG_CALLED_AE_NOT_RECOGNIZED",
    "SOURCE_PRESENTATION",
    "DIAG_LOCAL_LIMIT_EXCEEDED",
    "AssociationDecision",
    "AssociationPolicy",
    "host_matches",
    "is_loopback",
]

LOGGER = logging.getLogger(__name__)

# PS3.8 9.3.4 A-ASSOCIATE-RJ PDU fields
RESULT_REJECTED_PERMANENT = 0x01
RESULT_REJECTED_TRANSIENT = 0x02
SOURCE_SERVICE_USER = 0x01
DIAG_NO_REASON = 0x01
DIAG_CALLING_AE_NOT_RECOGNIZED = 0x03
DIAG_CALLED_AE_NOT_RECOGNIZED = 0x07
SOURCE_PRESENTATION = 0x03
DIAG_LOCAL_LIMIT_EXCEEDED = 0x02

_CALLERS = CallingAE.__table__

_DNS_TTL_S = 60.0


@dataclass(frozen=True)
class AssociationDecision:
    """Accept, or the A-ASSOCIATE-RJ (result, source, diagnostic) to send and why."""

    accepted: bool
    result: int = 0
    source: int = 0
    diagnostic: int = 0
    reason: str = ""
    #: Abstract syntaxes the accepted association may use; None: every one the node supports.
    abstract_syntaxes: frozenset[str] | None = None


#: The node's own title from loopback: the Verification SOP Class only (see the module documentation).
SELF_CHECK = AssociationDecision(True, reason="the node's own AE title from loopback: verification only",
                                 abstract_syntaxes=frozenset({str(Verification)}))


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and an IPv4-mapped loopback address (RFC 1122, RFC 4291)."""
    try:
        ip = ipaddress.ip_address(_normalise(address))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


ACCEPT = AssociationDecision(accepted=True)


class _Resolver:
    """Host name -> addresses, cached (pinning must not make every association wait on DNS)."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def addresses(self, host: str) -> frozenset[str]:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(host)
            if hit and now - hit[0] < _DNS_TTL_S:
                return hit[1]
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
            found = frozenset(_normalise(str(info[4][0])) for info in infos)
        except OSError:
            found = frozenset()
        with self._lock:
            self._cache[host] = (now, found)
        return found


_RESOLVER = _Resolver()


def _normalise(address: str) -> str:
    """``::ffff:10.0.0.1`` -> ``10.0.0.1``; strip an IPv6 zone."""
    address = address.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def host_matches(pinned: str, peer_address: str) -> bool:
    """Does ``peer_address`` (the TCP peer) satisfy a ``CallingAE.host`` entry?"""
    pinned = pinned.strip()
    peer = _normalise(peer_address)
    if not pinned:
        return True
    try:
        if "/" in pinned:
            return ipaddress.ip_address(peer) in ipaddress.ip_network(pinned, strict=False)
        return _normalise(str(ipaddress.ip_address(pinned))) == peer
    except ValueError:
        pass  # not an address: a host name
    return peer in _RESOLVER.addresses(pinned)


class AssociationPolicy:
    """Decides on each A-ASSOCIATE-RQ; see the module documentation for the rules."""

    def __init__(self, engine: Engine, *, ae_title: str, require_known_callers: bool) -> None:
        self._engine = engine
        self.ae_title = ae_title.strip()
        self.require_known_callers = require_known_callers

    def evaluate(self, called_ae_title: str, calling_ae_title: str, peer_address: str) -> AssociationDecision:
        called = (called_ae_title or "").strip()
        calling = (calling_ae_title or "").strip()
        if called != self.ae_title:
            return AssociationDecision(
                False, RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLED_AE_NOT_RECOGNIZED,
                f"called AE title {called!r} is not this node's ({self.ae_title!r})",
            )
        if calling == self.ae_title and is_loopback(peer_address):
            return SELF_CHECK
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(_CALLERS.c.host, _CALLERS.c.enabled).where(_CALLERS.c.ae_title == calling)
                ).all()
                hosts = [host for host, enabled in rows if enabled]
                listed = bool(rows)
                enforce = self.require_known_callers or listed or bool(
                    conn.execute(select(exists().select_from(_CALLERS))).scalar()
                )
        except SQLAlchemyError as exc:
            LOGGER.error("association policy: database unavailable (%s)", type(exc).__name__)
            return AssociationDecision(
                False, RESULT_REJECTED_TRANSIENT, SOURCE_SERVICE_USER, DIAG_NO_REASON,
                "database unavailable",
            )
        if not enforce:
            return ACCEPT
        if not listed:
            return AssociationDecision(
                False, RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLING_AE_NOT_RECOGNIZED,
                f"calling AE title {calling!r} is not in the allow-list",
            )
        if not hosts:
            return AssociationDecision(
                False, RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLING_AE_NOT_RECOGNIZED,
                f"calling AE title {calling!r} is disabled",
            )
        if any(host_matches(h or "", peer_address) for h in hosts):
            return ACCEPT
        return AssociationDecision(
            False, RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, DIAG_CALLING_AE_NOT_RECOGNIZED,
            f"calling AE title {calling!r} is not allowed from {peer_address}",
        )
