"""Deterministic UIDs (PS3.5 B.2: UUID-derived UIDs under the ``2.25`` root).

A retry of the same work must produce the same SOP Instance UIDs, so that a PACS sees the
same instance again (and answers "duplicate") instead of a second, different SR. Every UID
we mint is therefore a function of the inputs that identify the object.
"""

from __future__ import annotations

import uuid

__all__ = ["derive_uid", "NAMESPACE"]

#: Namespace of all name-based UUIDs minted by this gateway (fixed forever: changing it
#: would give every existing document a new identity on its next retry).
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:medrega-gateway:dicom-uid")


def derive_uid(*parts: str) -> str:
    """Return ``2.25.<decimal UUID>``, a UID that depends only on ``parts`` (in order).

    The parts are length-prefixed before hashing, so ``("ab", "c")`` and ``("a", "bc")``
    differ. The UUID is name-based (RFC 9562 version 5), at most 44 characters as a UID.

    >>> derive_uid("1.2.3", "1", "en", "sr") == derive_uid("1.2.3", "1", "en", "sr")
    True
    """
    if not parts:
        raise ValueError("derive_uid needs at least one part")
    for part in parts:
        if not isinstance(part, str):
            raise TypeError(f"derive_uid parts must be str, not {type(part).__name__}")
    name = "".join(f"{len(part)}:{part};" for part in parts)
    return f"2.25.{uuid.uuid5(NAMESPACE, name).int}"
