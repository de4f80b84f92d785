"""DIMSE status categories (PS3.7 C.4, PS3.4 B.2.3), taken from :mod:`pynetdicom.status`.

One answer everywhere to "did the peer store it?": Success (0x0000) and every Warning
(0x0001, 0x0107, 0x0116, 0xB000-0xBFFF) mean the instance was stored; Failure, Cancel, Pending and
unknown codes mean it was not.
"""

from __future__ import annotations

from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

__all__ = ["category", "is_stored"]


def category(status: int) -> str:
    """``"Success"``, ``"Warning"``, ``"Failure"``, ``"Cancel"``, ``"Pending"`` or ``"Unknown"``."""
    return code_to_category(status)


def is_stored(status: int | None) -> bool:
    """True for a C-STORE response status that means the SCP stored the instance (PS3.4 B.2.3)."""
    return status is not None and category(status) in (STATUS_SUCCESS, STATUS_WARNING)
