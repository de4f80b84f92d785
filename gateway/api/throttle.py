"""Failed authentication, limited per client address with a growing wait.

A client that presents bad tokens may try ``api.auth_failures_allowed`` times; every further
failure makes it wait, first ``api.auth_failure_delay_s`` seconds, then twice as long on each
failure after, up to ``api.auth_failure_max_delay_s``. While it waits, every request of that
address that presents a credential is refused with 429 Too Many Requests and a ``Retry-After``
(RFC 6585 section 4, RFC 9110 section 10.2.3) before the token is looked up, and writes no audit
row: a flood of bad tokens costs neither a database lookup nor an audit row per request. An
address is forgotten after no failure for ``api.auth_failure_delay_s`` x 2^10 seconds (or the
longest wait, if longer; 1024 s at the defaults), and at most :data:`MAX_ADDRESSES` addresses are
remembered (the least recently seen are dropped first).

The count is kept in the API process: with several API processes each one limits on its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_ADDRESSES", "AuthFailureLimiter"]

#: Addresses remembered at most (memory stays bounded under a spoofed-address flood).
MAX_ADDRESSES = 65536


@dataclass
class _Record:
    failures: int
    last_failure: float
    blocked_until: float


class AuthFailureLimiter:
    """Failed authentications per client address (thread-safe; FastAPI runs dependencies in
    a thread pool)."""

    def __init__(self, allowed: int, delay_s: float, max_delay_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.allowed = allowed
        self.delay_s = delay_s
        self.max_delay_s = max(max_delay_s, delay_s)
        self._forget_after_s = max(self.max_delay_s, delay_s * 2 ** 10)
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Whole seconds ``address`` must still wait before it may present a credential; 0: now."""
        now = self._clock()
        with self._lock:
            record = self._records.get(address)
            if record is None:
                return 0
            if now - record.last_failure > self._forget_after_s:
                del self._records[address]
                return 0
            return max(0, math.ceil(record.blocked_until - now))

    def failed(self, address: str) -> float:
        """Count a failed authentication of ``address``; the seconds it must now wait (0: none)."""
        now = self._clock()
        with self._lock:
            record = self._records.pop(address, None)
            if record is None or now - record.last_failure > self._forget_after_s:
                record = _Record(0, now, now)
            record.failures += 1
            record.last_failure = now
            over = record.failures - self.allowed
            wait = 0.0 if over <= 0 else min(self.max_delay_s, self.delay_s * 2.0 ** min(over - 1, 62))
            record.blocked_until = now + wait
            self._records[address] = record
            while len(self._records) > MAX_ADDRESSES:
                self._records.popitem(last=False)
            return wait
