"""DIMSE status categories (PS3.7 C.4, PS3.4 B.2.3), taken from :mod:`pynetdicom.status`.

One answer everywhere to "did the peer store it?": Success (0x0000) and every Warning
(0x0001, 0x0107, 0x0116, 0xB000-0xBFFF) mean the instance was stored; Failure, Cancel, Pending and
unknown codes mean it was not.
"""

from __future__ import annotations

from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, STORAGE_SERVICE_CLASS_STATUS, code_to_category

__all__ = ["category", "is_stored", "describe_store_status"]


def category(status: int) -> str:
    """``"Success"``, ``"Warning"``, ``"Failure"``, ``"Cancel"``, ``"Pending"`` or ``"Unknown"``."""
    return code_to_category(status)


def is_stored(status: int | None) -> bool:
    """True for a C-STORE response status that means the SCP stored the instance (PS3.4 B.2.3)."""
    return status is not None and category(status) in (STATUS_SUCCESS, STATUS_WARNING)


def describe_store_status(status: int, comment: str | None = None) -> str:
    """A C-STORE response status as an operator reads it: ``"C-STORE status 0xA700 Refused: Out
    of Resources"``, with the peer's Error Comment (0000,0902) when it sent one (PS3.4 B.2.3,
    PS3.7 C.4.2.1.5)."""
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, (category(status), ""))[1] or category(status)
    text = f"C-STORE status 0x{status:04X} {meaning}"
    return f"{text} ({comment})" if comment else text
